"""Helpers behind the registry fixtures: real registries, a token server, test images, fake registries.

Plain functions and classes (no fixtures) so any test directory can use them: ``conftest.py`` beside this
file wraps them as fixtures. Named ``reg_helpers`` (not ``conftest``) so ``from reg_helpers import …`` is
unambiguous however many conftest.py files pytest has loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3

BUSYBOX = "/bin/busybox"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the real registry ------------------------------------------------------------------------------


@dataclass
class RegistryServer:
    """A running ``docker-registry serve``."""

    host: str
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    username: str = ""
    password: str = ""
    token_server: TokenServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[str]:
        """The access-log lines (``"METHOD URI HTTP/1.1" status``), oldest first."""
        return [line for line in self.log().splitlines() if '" ' in line and "HTTP/1.1" in line
                and not line.startswith("time=")]

    @property
    def creds(self) -> str:
        return f"{self.username}:{self.password}"

    def stop(self) -> None:
        if self.token_server is not None:
            self.token_server.stop()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(base: Path, auth: dict[str, Any] | None = None, *, attempts: int = 3) -> RegistryServer:
    """Start docker-registry with storage under ``base`` and wait until /v2/ answers."""
    binary = need_tool("docker-registry")
    base.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(base / "data")}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
        }
        if auth:
            config["auth"] = auth
        # JSON is YAML: no YAML writer needed.
        (base / "config.yml").write_text(json.dumps(config, indent=2))
        log_path = base / "registry.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([binary, "serve", str(base / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
        server = RegistryServer(f"127.0.0.1:{port}", base, log_path, proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
                resp = urllib3.request("GET", f"http://127.0.0.1:{port}/v2/", retries=False, timeout=2)
                if resp.status in (200, 401):
                    return server
            except (OSError, urllib3.exceptions.HTTPError):
                time.sleep(0.05)
        last_error = server.log()[-2000:]
        server.stop()
    raise RuntimeError(f"docker-registry did not start:\n{last_error}")


def start_htpasswd_registry(base: Path, user: str = "berth", password: str = "s3cret-pass") -> RegistryServer:
    """A registry with HTTP basic auth: one user, its password hashed by ``htpasswd -Bbn`` (bcrypt)."""
    htpasswd = need_tool("htpasswd")
    base.mkdir(parents=True, exist_ok=True)
    line = subprocess.run([htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True).stdout
    (base / "htpasswd").write_text(line.strip() + "\n")
    server = start_registry(base, {"htpasswd": {"realm": "berth-test", "path": str(base / "htpasswd")}})
    server.username, server.password = user, password
    return server


# --- the token server -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenServer:
    """A bearer-token server (docker-distribution auth/token.md) issuing RS256 JWTs signed by openssl."""

    key: Path
    cert_der: bytes
    users: dict[str, str]
    service: str = "berth-test-registry"
    issuer: str = "berth-test-issuer"
    lifetime: int = 300
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def realm(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode("ascii")]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def issue(self, user: str, scopes: list[str]) -> dict[str, Any]:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        token = self.sign({"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.lifetime,
                           "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access})
        return {"token": token, "access_token": token, "expires_in": self.lifetime,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}


def _token_handler(ts: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            user = ""
            auth = self.headers.get("Authorization", "")
            ok = False
            if auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                ok = ts.users.get(user) == password
            ts.requests.append({"user": user, "scopes": query.get("scope", []), "service": query.get("service"),
                                "authorized": ok})
            if parts.path != "/token" or not ok:
                body = b'{"details":"unauthorized"}'
                self.send_response(401)
            else:
                body = json.dumps(ts.issue(user, query.get("scope", []))).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def start_token_registry(base: Path, user: str = "tokenuser", password: str = "token-pass") -> RegistryServer:
    """A registry with bearer-token auth and its token server (``server.token_server``; stopped by
    ``server.stop()``). The registry trusts a self-signed certificate made here with openssl."""
    openssl = need_tool("openssl")
    base.mkdir(parents=True, exist_ok=True)
    key, cert = base / "key.pem", base / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=berth-test-token"], check=True, capture_output=True)
    der = subprocess.run([openssl, "x509", "-in", str(cert), "-outform", "DER"], check=True,
                         capture_output=True).stdout
    ts = TokenServer(key, der, {user: password})
    ts.start()
    try:
        server = start_registry(base, {"token": {"realm": ts.realm, "service": ts.service, "issuer": ts.issuer,
                                                 "rootcertbundle": str(cert)}})
    except BaseException:
        ts.stop()
        raise
    server.username, server.password = user, password
    server.token_server = ts
    return server


# --- test images ------------------------------------------------------------------------------------


def skopeo(*args: str) -> str:
    """Run skopeo; its stdout. Registries here are plain-http loopback, so TLS verification is off."""
    binary = need_tool("skopeo")
    proc = subprocess.run([binary, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def skopeo_raw(ref: str, creds: str | None = None) -> bytes:
    """The manifest bytes at ``docker://ref``, as skopeo reads them."""
    args = ["inspect", "--raw", "--tls-verify=false", *(["--creds", creds] if creds else []), f"docker://{ref}"]
    return skopeo(*args).encode()


def build_rootfs(dest: Path, marker: str) -> Path:
    """A tiny root filesystem: busybox, a few applet links, and a file unique to this session."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (.ci/run installs it)")
    for d in ("bin", "etc", "tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo"):
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "etc/berth-test").write_text(marker + "\n")
    return dest


def build_layout(layout: Path, rootfs: Path, tag: str, *, arch: str = "amd64", extra: str = "") -> None:
    """Add image ``tag`` to the OCI layout (umoci): the rootfs as one layer, a small second layer."""
    umoci = need_tool("umoci")

    def run(*argv: str) -> None:
        subprocess.run([umoci, *argv], check=True, capture_output=True)

    if not (layout / "index.json").exists():
        run("init", "--layout", str(layout))
    image = f"{layout}:{tag}"
    run("new", "--image", image)
    run("config", "--image", image, "--architecture", arch, "--os", "linux")
    run("insert", "--image", image, str(rootfs), "/")
    note = layout.parent / f"note-{tag}"
    note.write_text(f"{tag} {arch} {extra}\n")
    run("insert", "--image", image, str(note), "/etc/note")
    run("config", "--image", image, "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin")


def add_index(layout: Path, tag: str, members: dict[str, str]) -> None:
    """Write an OCI image index of the ``members`` tags (``tag`` → ``os/arch``) and tag it ``tag``."""
    index_path = layout / "index.json"
    top = json.loads(index_path.read_text())
    by_name = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in top["manifests"]
               if "annotations" in m}
    entries = []
    for member, platform in members.items():
        desc = dict(by_name[member])
        desc.pop("annotations", None)
        os_name, arch = platform.split("/")
        desc["platform"] = {"architecture": arch, "os": os_name}
        entries.append(desc)
    blob = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": entries}).encode()
    digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(blob)
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}",
                             "size": len(blob), "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(top))


@dataclass(frozen=True)
class PushedImage:
    ref: str
    raw: bytes
    repo: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(json.loads(self.raw))

    @property
    def by_digest(self) -> str:
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"


def build_image_layouts(base: Path) -> Path:
    """Under ``base``: ``layout/``, an OCI layout (umoci) with tags ``base`` (linux/amd64), ``amd64``,
    ``arm64`` and ``multi`` (an index of those two); and ``zstd/``, ``base`` recompressed with zstd."""
    marker = uuid.uuid4().hex  # fresh content: skopeo's blob cache cannot substitute old blobs
    rootfs = build_rootfs(base / "rootfs", marker)
    layout = base / "layout"
    build_layout(layout, rootfs, "base")
    build_layout(layout, rootfs, "amd64", arch="amd64", extra="index member")
    build_layout(layout, rootfs, "arm64", arch="arm64", extra="index member")
    add_index(layout, "multi", {"amd64": "linux/amd64", "arm64": "linux/arm64"})
    skopeo("copy", "--quiet", "--dest-compress-format", "zstd", f"oci:{layout}:base", f"oci:{base / 'zstd'}:base")
    return base


def push_test_images(registry: RegistryServer, layouts: Path) -> dict[str, PushedImage]:
    """Push the images of :func:`build_image_layouts` with skopeo: ``v2s2``, ``oci``, ``zstd``, ``index``."""
    layout = layouts / "layout"
    images = {
        "v2s2": push_image(f"oci:{layout}:base", registry.ref("test/v2s2"), "--format", "v2s2"),
        "oci": push_image(f"oci:{layout}:base", registry.ref("test/oci"), "--format", "oci"),
        # --preserve-digests: skopeo must not swap the zstd layers for gzip ones it knows the registry has.
        "zstd": push_image(f"oci:{layouts / 'zstd'}:base", registry.ref("test/zstd"), "--preserve-digests"),
        "index": push_image(f"oci:{layout}:multi", registry.ref("test/index"), "--all", "--preserve-digests"),
    }
    assert "tar+zstd" in images["zstd"].raw.decode()
    assert images["v2s2"].manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert images["index"].manifest["mediaType"].endswith("index.v1+json")
    return images


def push_image(src: str, dest_ref: str, *extra: str, creds: str | None = None) -> PushedImage:
    args = ["copy", "--quiet", "--dest-tls-verify=false", *extra]
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, src, f"docker://{dest_ref}")
    repo = dest_ref.split("/", 1)[1].rsplit(":", 1)[0]
    return PushedImage(dest_ref, skopeo_raw(dest_ref, creds), repo)


def isolate_registry_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point berth's and Docker's credential and registry config paths into ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("BERTH_AUTH_FILE", str(home / "berth-auth.json"))
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "docker"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("BERTH_REGISTRIES_CONF", str(home / "registries.json"))
    return home


# --- scripted fake registries -----------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


Route = Callable[[BaseHTTPRequestHandler], None]


class FakeRegistry:
    """A tiny HTTP server answering from a route table, for behaviour a real registry never shows.

    ``add(method, path, status, body, headers)`` serves a fixed answer; ``route(method, path, fn)`` hands
    the request handler to ``fn`` (which may write half a body and hang up). Unknown paths are 404 with a
    distribution-spec error body. ``requests`` records every request.
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.requests: list[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _dispatch(self) -> None:
                fake.requests.append(Request(self.command, self.path, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = urlsplit(self.path).path
                route = fake.routes.get((self.command, path))
                if route is None and self.command == "HEAD":
                    route = fake.routes.get(("GET", path))
                if route is None:
                    respond(self, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}',
                            {"Content-Type": "application/json"})
                    return
                route(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.add("GET", "/v2/", 200, b"{}", {"Content-Type": "application/json"})
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, path: str, fn: Route) -> None:
        self.routes[(method, path)] = fn

    def add(self, method: str, path: str, status: int = 200, body: bytes = b"",
            headers: dict[str, str] | None = None) -> None:
        self.route(method, path, lambda h: respond(h, status, body, headers or {}))

    def add_manifest(self, repo: str, reference: str, data: bytes, media_type: str,
                     digest_header: str | None = None) -> None:
        headers = {"Content-Type": media_type,
                   "Docker-Content-Digest": digest_header or "sha256:" + hashlib.sha256(data).hexdigest()}
        self.add("GET", f"/v2/{repo}/manifests/{reference}", 200, data, headers)

    def add_blob(self, repo: str, digest: str, data: bytes) -> None:
        self.add("GET", f"/v2/{repo}/blobs/{digest}", 200, data, {"Content-Type": "application/octet-stream"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def respond(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
