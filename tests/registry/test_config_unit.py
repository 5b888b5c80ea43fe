"""Unit tests: WWW-Authenticate parsing, credential lookup, login/logout, registries config, the token cache."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from berth.errors import InvalidArgument, PermissionDenied
from berth.registry import Credentials, RegistriesConfig, RegistryClient, login, logout, lookup
from berth.registry.auth import DOCKER_HUB_KEY, Authenticator, normalize_registry, parse_www_authenticate

pytestmark = pytest.mark.unit


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- WWW-Authenticate -------------------------------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    [c] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:samalba/my-app:pull,push"}


def test_parse_several_challenges_and_quirks() -> None:
    challenges = parse_www_authenticate([
        'Basic realm="Registry Realm", Bearer realm=https://t.example/token, service=reg,'
        ' error="insufficient_scope"',
        'Bearer realm="a \\"quoted\\" realm",scope="repository:a:pull repository:b:pull"',
    ])
    assert [c.scheme for c in challenges] == ["basic", "bearer", "bearer"]
    assert challenges[0].params == {"realm": "Registry Realm"}
    assert challenges[1].params == {"realm": "https://t.example/token", "service": "reg",
                                    "error": "insufficient_scope"}
    assert challenges[2].params["realm"] == 'a "quoted" realm'
    assert challenges[2].params["scope"] == "repository:a:pull repository:b:pull"
    assert parse_www_authenticate("") == []


# --- credentials ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "name"), [
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("http://LOCALHOST:5000/", "localhost:5000"),
    ("quay.io/org/repo", "quay.io"),
    ("[::1]:5000", "[::1]:5000"),
])
def test_normalize_registry(key: str, name: str) -> None:
    assert normalize_registry(key) == name


def test_lookup_order_and_formats(registry_env: Path) -> None:
    berth_file = registry_env / "berth-auth.json"
    docker = registry_env / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:hubpass")},
        "reg.example:5000": {"auth": b64("docker:dpass")},
        "fields.example": {"username": "u", "password": "p"},
        "token.example": {"identitytoken": "refresh-me"},
    }}))
    assert lookup("docker.io") == Credentials("hub", "hubpass")
    assert lookup("reg.example:5000") == Credentials("docker", "dpass")
    assert lookup("fields.example") == Credentials("u", "p")
    assert lookup("token.example") == Credentials(identity_token="refresh-me")
    assert lookup("reg.example") is None, "the port is part of the registry"
    berth_file.write_text(json.dumps({"auths": {"reg.example:5000": {"auth": b64("berth:bpass")}}}))
    assert lookup("reg.example:5000") == Credentials("berth", "bpass"), "berth's own file comes first"
    berth_file.write_text(json.dumps({"auths": {"bad.example": {"auth": "!!!"}}}))
    with pytest.raises(InvalidArgument, match=r"auths\['bad.example'\].auth is not base64"):
        lookup("bad.example")
    assert "bpass" not in repr(Credentials("berth", "bpass"))


def test_credential_helpers(registry_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = registry_env / "bin"
    bindir.mkdir()
    script = ("#!/bin/sh\nread server\ncase \"$server\" in\n"
              "  helper.example) echo '{\"Username\":\"h\",\"Secret\":\"hs\"}' ;;\n"
              "  *store*) echo '{\"Username\":\"<token>\",\"Secret\":\"idtok\"}' ;;\n"
              "  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n")
    for name in ("docker-credential-one", "docker-credential-all"):
        (bindir / name).write_text(script)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    docker = registry_env / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({
        "auths": {"other.example": {"auth": b64("file:fpass")}, "helper.example": {"auth": b64("x:y")}},
        "credHelpers": {"helper.example": "one", "missing.example": "not-installed"},
        "credsStore": "all",
    }))
    assert lookup("helper.example") == Credentials("h", "hs")
    assert lookup("my.store.example") == Credentials(identity_token="idtok")
    assert lookup("other.example") == Credentials("file", "fpass"), "the store has nothing: auths"
    assert lookup("missing.example") is None, "a missing helper is skipped, not fatal"


def test_login_and_logout(registry_env: Path) -> None:
    path = registry_env / "berth-auth.json"
    path.write_text(json.dumps({"auths": {"http://keep.example": {"auth": b64("k:k")},
                                          "reg.example": {"auth": b64("old:old")}}, "other": 1}))
    assert login("reg.example", "new", "pw:with:colons") == path
    doc = json.loads(path.read_text())
    assert doc["other"] == 1 and "http://keep.example" in doc["auths"]
    assert lookup("reg.example") == Credentials("new", "pw:with:colons")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    login("index.docker.io", "hub", "pw")
    assert DOCKER_HUB_KEY in json.loads(path.read_text())["auths"]
    assert lookup("docker.io") == Credentials("hub", "pw")
    assert logout("docker.io") and lookup("docker.io") is None
    assert not logout("never.example")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".auth-")] == []
    with pytest.raises(InvalidArgument, match="user name"):
        login("reg.example", "a:b", "x")


def test_login_creates_private_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_AUTH_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = login("reg.example", "u", "p")
    assert path == tmp_path / "xdg/berth/auth.json"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


# --- registries config and transport choice ---------------------------------------------------------


def test_registries_config(registry_env: Path) -> None:
    conf = registry_env / "registries.json"
    assert RegistriesConfig.load() == RegistriesConfig()
    conf.write_text(json.dumps({"insecure": ["lan.example:5000", "10.0.0.7"],
                                "mirrors": {"index.docker.io": ["mirror.lan:5000", "https://m.example"]}}))
    config = RegistriesConfig.load()
    assert config.is_insecure("lan.example:5000") and not config.is_insecure("lan.example:6000")
    assert config.is_insecure("10.0.0.7") and config.is_insecure("10.0.0.7:8443")
    assert config.mirrors_for("docker.io") == ("mirror.lan:5000", "https://m.example")
    assert config.mirrors_for("quay.io") == ()
    conf.write_text(json.dumps({"insecure": "lan.example"}))
    with pytest.raises(InvalidArgument, match="'insecure' must be a list"):
        RegistriesConfig.load()
    conf.write_text("{not json")
    with pytest.raises(InvalidArgument, match=str(conf)):
        RegistriesConfig.load()


def test_scheme_choice(registry_env: Path) -> None:
    (registry_env / "registries.json").write_text(json.dumps({
        "insecure": ["lan.example:5000"], "mirrors": {"docker.io": ["mirror.lan:5000", "http://m2.lan"]}}))
    assert RegistryClient("127.0.0.1:5000")._upstream.base == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000")._upstream.base == "http://localhost:5000"
    assert RegistryClient("[::1]:5000")._upstream.base == "http://[::1]:5000"
    assert RegistryClient("127.0.0.1:5000", insecure=False)._upstream.base == "https://127.0.0.1:5000"
    quay = RegistryClient("quay.io")._upstream
    assert (quay.base, quay.verify, quay.http_fallback) == ("https://quay.io", True, False)
    lan = RegistryClient("lan.example:5000")._upstream
    assert (lan.base, lan.verify, lan.http_fallback) == ("https://lan.example:5000", False, True)
    hub = RegistryClient("docker.io")
    assert hub._upstream.base == "https://registry-1.docker.io"
    assert [m.base for m in hub._mirrors] == ["https://mirror.lan:5000", "http://m2.lan"]
    with pytest.raises(InvalidArgument):
        RegistryClient("quay.io/org")


# --- the token cache --------------------------------------------------------------------------------


class FakeTokenServer:
    def __init__(self, answers: list[tuple[int, dict[str, object]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, dict[str, str], bytes | None]] = []

    def __call__(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        self.calls.append((method, url, headers, body))
        status, doc = self.answers.pop(0)
        return status, json.dumps(doc).encode()


CHALLENGE = ['Bearer realm="https://auth.example/token",service="reg.example",scope="repository:app:pull"']


def test_token_cached_per_scope_until_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("berth.registry.auth.time.monotonic", lambda: clock[0])
    server = FakeTokenServer([(200, {"token": "t1", "expires_in": 300}), (200, {"access_token": "t2"}),
                              (200, {"token": "t3"})])
    auth = Authenticator("reg.example", Credentials("user", "pw"), server)
    scopes = ["repository:app:pull"]
    assert auth.header(scopes) is None, "anonymous until challenged"
    assert auth.challenge(CHALLENGE, scopes, None) == "Bearer t1"
    method, url, headers, _ = server.calls[0]
    assert method == "GET"
    assert url == "https://auth.example/token?service=reg.example&scope=repository%3Aapp%3Apull&account=user"
    assert headers["Authorization"] == "Basic " + b64("user:pw")
    assert auth.header(scopes) == "Bearer t1"
    assert len(server.calls) == 1, "cached"
    assert auth.header(["repository:other:pull"]) == "Bearer t2", "another scope, another token"
    clock[0] += 295  # within 10 s of expiry: renewed
    assert auth.header(scopes) == "Bearer t3"
    assert len(server.calls) == 3


def test_token_refusals() -> None:
    server = FakeTokenServer([(401, {}), (200, {"token": "t"})])
    auth = Authenticator("reg.example", Credentials("user", "bad"), server)
    with pytest.raises(PermissionDenied, match="refused the credentials as user: wrong user name or password"):
        auth.challenge(CHALLENGE, [], None)
    anonymous = Authenticator("reg.example", None, server)
    assert anonymous.challenge(CHALLENGE, [], None) == "Bearer t"
    assert "Authorization" not in server.calls[-1][2]
    insufficient = [CHALLENGE[0] + ',error="insufficient_scope"']
    with pytest.raises(PermissionDenied, match=r"access to repository:app:pull denied \(insufficient_scope\)"):
        anonymous.challenge(insufficient, ["repository:app:pull"], "Bearer t", retried=True)


def test_identity_token_uses_oauth_post() -> None:
    server = FakeTokenServer([(200, {"access_token": "a", "expires_in": 60})])
    auth = Authenticator("reg.example", Credentials(identity_token="refresh"), server)
    assert auth.challenge(CHALLENGE, ["repository:app:pull"], None) == "Bearer a"
    method, url, headers, body = server.calls[0]
    assert method == "POST" and url == "https://auth.example/token"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert body is not None and b"grant_type=refresh_token" in body and b"refresh_token=refresh" in body


def test_basic_challenge() -> None:
    auth = Authenticator("reg.example", Credentials("u", "p"), FakeTokenServer([]))
    header = auth.challenge(['Basic realm="r"'], [], None)
    assert header == "Basic " + b64("u:p")
    assert auth.header([]) == header, "sent up front from now on"
    with pytest.raises(PermissionDenied, match="authentication failed as u: wrong user name or password"):
        auth.challenge(['Basic realm="r"'], [], header)
    with pytest.raises(PermissionDenied, match="requires authentication"):
        Authenticator("reg.example", None, FakeTokenServer([])).challenge(['Basic realm="r"'], [], None)
    with pytest.raises(PermissionDenied, match=r"no supported authentication scheme \(negotiate\)"):
        auth.challenge(["Negotiate"], [], None)
