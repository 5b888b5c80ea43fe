"""A distribution-spec client: one registry, its mirrors, its credentials, over pooled HTTP.

Why this shape: every pull and push is a few dozen small requests and a few large streams to one
registry, from several threads. A single shared urllib3 :class:`~urllib3.PoolManager` keeps connections
alive across them; :class:`RegistryClient` adds what the distribution spec and real registries need on
top — authentication (:mod:`berth.registry.auth`), retries with backoff, mirrors, plain-http loopback,
digest verification, and errors that say in one line which image or blob failed and why.

Transport rules:

* Registries on loopback (``localhost``, 127.0.0.0/8, ``::1``) speak plain http, as Docker treats them.
  Everything else is https with certificate verification, unless it is listed as insecure.
* An *insecure* registry is tried over https without certificate verification, and over plain http
  when the TLS handshake fails (Docker's ``insecure-registries``).
* Requests that fail to connect, or get 429 or a 5xx, are retried ``tries`` times in all with
  exponential backoff (``backoff * 2**n`` seconds, or the server's ``Retry-After`` up to 30 s).
  Uploads with a body are retried whole by the caller (a new upload session), never half-replayed.
* Blob downloads follow redirects (the ``Authorization`` header is dropped when the redirect leaves the
  registry's host) and resume with ``Range: bytes=<offset>-`` from what the content store already
  holds; the store verifies the digest at commit and keeps nothing when it does not match.

Configuration file — ``$BERTH_REGISTRIES_CONF``, default ``/etc/berth/registries.json``; a missing file
means no insecure registries and no mirrors::

    {
      "insecure": ["registry.lan:5000", "10.0.0.7"],
      "mirrors": {"docker.io": ["mirror.lan:5000", "https://mirror.example.com"]}
    }

``insecure`` lists ``host[:port]`` entries; an entry without a port matches every port of that host.
``mirrors`` maps a registry (as a reference names it: ``docker.io``, ``quay.io``, ``host:port``) to
mirrors tried in order for *pulls* before the registry itself; a mirror that fails or lacks the image is
skipped. A mirror is ``host[:port]`` (scheme chosen by the rules above) or a full ``http://`` or
``https://`` URL. Pushes always go to the registry itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import HTTPError, InsecureRequestWarning, MaxRetryError, SSLError
from urllib3.util import Retry, Timeout

from berth.content.store import ContentStore, Follower
from berth.errors import AlreadyExists, BerthError, InvalidArgument, NotFound, PermissionDenied, Unsupported
from berth.oci.digest import Digest
from berth.oci.image import (
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
    SCHEMA1_MEDIA_TYPES,
    Descriptor,
)
from berth.oci.reference import Reference
from berth.registry.auth import Authenticator, Credentials, lookup, normalize_registry, repository_scope

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/berth/registries.json"
#: Where Docker Hub's API lives; ``docker.io`` is only its name in references.
DOCKER_HUB_API = "registry-1.docker.io"

#: The manifest types berth asks for, most specific first (index types so platform selection can happen).
MANIFEST_ACCEPT: tuple[str, ...] = (
    MEDIA_TYPE_IMAGE_MANIFEST,
    MEDIA_TYPE_IMAGE_INDEX,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_LIST,
)
#: Manifests larger than this are refused (containerd and the distribution registry use 4 MiB).
MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_TRIES = 4
DEFAULT_BACKOFF = 0.25
_MAX_RETRY_AFTER = 30.0
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_STREAM_CHUNK = 256 << 10
_MAX_REDIRECTS = 10
_USER_AGENT = "berth/0.1"
#: How long a blob download waits for another process that is writing the same blob.
DEFAULT_INGEST_WAIT = 600.0


# --- progress ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """One progress event for one blob, for a progress bar or a log line.

    ``status`` is ``"exists"`` (already present, nothing transferred), ``"downloading"``,
    ``"uploading"``, ``"mounted"`` (cross-repository mount), ``"done"`` (committed or pushed), or
    ``"retrying"`` (a transfer failed and will resume). Callbacks run on worker threads.
    """

    digest: Digest
    done: int
    total: int
    status: str


ProgressCallback = Callable[[Progress], None]


def _emit(callback: ProgressCallback | None, digest: Digest, done: int, total: int, status: str) -> None:
    if callback is not None:
        callback(Progress(digest, done, total, status))


# --- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistriesConfig:
    """Insecure registries and mirrors (the file format is in the module docstring)."""

    insecure: tuple[str, ...] = ()
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> RegistriesConfig:
        """Read ``path`` (default ``$BERTH_REGISTRIES_CONF`` or /etc/berth/registries.json)."""
        target = Path(path or os.environ.get("BERTH_REGISTRIES_CONF") or DEFAULT_CONFIG_PATH)
        try:
            with open(target, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"registries config {target}: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument(f"registries config {target}: expected a JSON object")
        insecure = doc.get("insecure", [])
        if not isinstance(insecure, list) or not all(isinstance(h, str) and h for h in insecure):
            raise InvalidArgument(f"registries config {target}: 'insecure' must be a list of host[:port] strings")
        mirrors = doc.get("mirrors", {})
        if not isinstance(mirrors, dict) or not all(
            isinstance(v, list) and all(isinstance(m, str) and m for m in v) for v in mirrors.values()
        ):
            raise InvalidArgument(
                f"registries config {target}: 'mirrors' must map a registry to a list of host[:port] strings"
            )
        return cls(
            insecure=tuple(h.lower() for h in insecure),
            mirrors={normalize_registry(k): tuple(v) for k, v in mirrors.items()},
        )

    def is_insecure(self, host: str) -> bool:
        host = host.lower()
        bare = _strip_port(host)
        return any(entry == host or (entry == bare and _strip_port(entry) == entry) for entry in self.insecure)

    def mirrors_for(self, registry: str) -> tuple[str, ...]:
        return self.mirrors.get(normalize_registry(registry), ())


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    try:
        return Reference(host, "probe").is_loopback()
    except (InvalidArgument, ValueError):
        return False


# --- the shared connection pools -------------------------------------------------------------------

_POOL_LOCK = threading.Lock()
_POOLS: dict[bool, urllib3.PoolManager] = {}


def _pool(verify: bool) -> urllib3.PoolManager:
    """The process-wide pool (one verifying TLS certificates, one for insecure registries)."""
    with _POOL_LOCK:
        pool = _POOLS.get(verify)
        if pool is None:
            if verify:
                pool = urllib3.PoolManager(num_pools=32, maxsize=8, blocksize=_STREAM_CHUNK)
            else:
                # The user asked for this registry to be insecure; one warning per request would be noise.
                warnings.filterwarnings("ignore", category=InsecureRequestWarning)
                pool = urllib3.PoolManager(num_pools=32, maxsize=8, blocksize=_STREAM_CHUNK, cert_reqs="CERT_NONE")
            _POOLS[verify] = pool
        return pool


# --- errors -----------------------------------------------------------------------------------------


class _Unavailable(BerthError):
    """The registry could not be reached, or kept answering 429/5xx (retried by upload loops)."""


class _Transient(Exception):
    """A blob transfer broke off; the caller may resume it."""


class _TooLong(Exception):
    """The registry sent more bytes than the descriptor's size."""


class TransferCancelled(BerthError):
    """A transfer stopped because its ``cancel`` event was set (another part of the pull failed)."""


def _reason(exc: BaseException) -> str:
    """A short, human reason for a transport failure: ``connection refused``, ``read timed out``."""
    inner: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        inner = exc.reason
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    text = re.sub(r"^\w+\((?:host=)?[^)]*\):\s*", "", text)
    text = re.sub(r"^Failed to establish a new connection:\s*", "", text)
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text)
    text = text.strip() or type(inner).__name__
    return text[0].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def _registry_errors(body: bytes) -> str:
    """The ``errors`` of a distribution-spec error body, as ``CODE: message; …``."""
    try:
        doc = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:200]
    parts = []
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        for err in doc["errors"]:
            if isinstance(err, dict):
                code, message = err.get("code", ""), err.get("message", "")
                parts.append(f"{code}: {message}" if code and message else str(code or message))
    return "; ".join(p for p in parts if p)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    try:
        resp.drain_conn()
    except (HTTPError, OSError):
        pass
    resp.release_conn()


def _read_all(resp: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        _discard(resp)
        raise InvalidArgument(f"{what}: {length} bytes is more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in resp.stream(_STREAM_CHUNK, decode_content=True):
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"{what}: more than the {limit} bytes allowed")
            chunks.append(chunk)
    finally:
        _discard(resp)
    return b"".join(chunks)


def _with_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _maybe_digest(reference: str) -> Digest | None:
    return Digest.parse(reference) if ":" in reference else None


# --- endpoints --------------------------------------------------------------------------------------


class _Endpoint:
    """One host to talk to (the registry or a mirror): its scheme, TLS policy and authentication."""

    def __init__(self, host: str, scheme: str, verify: bool, http_fallback: bool, mirror: bool) -> None:
        self.host = host
        self.scheme = scheme
        self.verify = verify
        self.http_fallback = http_fallback
        self.mirror = mirror
        self.auth: Authenticator | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, path: str) -> str:
        return self.base + path


# --- the client -------------------------------------------------------------------------------------


class RegistryClient:
    """Talk to the registry a reference names (``RegistryClient(ref.domain)``).

    ``insecure``: None follows the rules in the module docstring; True allows unverified TLS and plain
    http; False insists on verified https even for loopback. ``credentials``: None looks them up
    (:func:`berth.registry.auth.lookup`) per host, :data:`~berth.registry.auth.ANONYMOUS` sends none.
    The client is thread-safe: one is shared by the workers of a pull or push.
    """

    def __init__(self, registry: str, *, insecure: bool | None = None, credentials: Credentials | None = None,
                 config: RegistriesConfig | None = None, tries: int = DEFAULT_TRIES,
                 backoff: float = DEFAULT_BACKOFF, timeout: float = 60.0, connect_timeout: float = 15.0,
                 ingest_wait: float = DEFAULT_INGEST_WAIT) -> None:
        if not registry or "/" in registry:
            raise InvalidArgument(f"invalid registry {registry!r}: expected host[:port]")
        self.registry = normalize_registry(registry)
        self.config = config if config is not None else RegistriesConfig.load()
        self.tries = max(1, tries)
        self.backoff = backoff
        self.ingest_wait = ingest_wait
        self._timeout = Timeout(connect=connect_timeout, read=timeout)
        self._push_repos: set[str] = set()
        host = DOCKER_HUB_API if self.registry == "docker.io" else self.registry
        self._upstream = self._endpoint(host, insecure, mirror=False, credentials=credentials)
        self._mirrors = [self._mirror(m) for m in self.config.mirrors_for(self.registry)]

    @classmethod
    def for_reference(cls, reference: Reference | str, **kwargs: Any) -> RegistryClient:
        ref = Reference.parse(reference) if isinstance(reference, str) else reference
        return cls(ref.domain, **kwargs)

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, {self._upstream.base})"

    # -- endpoints ----------------------------------------------------------------------------------

    def _endpoint(self, host: str, insecure: bool | None, *, mirror: bool, credentials: Credentials | None,
                  scheme: str | None = None) -> _Endpoint:
        if scheme is not None:
            ep = _Endpoint(host, scheme, verify=not (insecure or self.config.is_insecure(host)),
                           http_fallback=False, mirror=mirror)
        elif insecure is None and _is_loopback(host):
            ep = _Endpoint(host, "http", verify=True, http_fallback=False, mirror=mirror)
        elif insecure or (insecure is None and self.config.is_insecure(host)):
            ep = _Endpoint(host, "https", verify=False, http_fallback=True, mirror=mirror)
        else:
            ep = _Endpoint(host, "https", verify=True, http_fallback=False, mirror=mirror)
        if credentials is None:
            credentials = lookup(self.registry if host == DOCKER_HUB_API else host)
        ep.auth = Authenticator(self.registry if not mirror else host, credentials, self._token_fetcher(ep))
        return ep

    def _mirror(self, entry: str) -> _Endpoint:
        scheme = None
        if "://" in entry:
            parts = urlsplit(entry)
            scheme, entry = parts.scheme, parts.netloc
        return self._endpoint(entry, None, mirror=True, credentials=None, scheme=scheme)

    def _token_fetcher(self, ep: _Endpoint) -> Callable[[str, str, dict[str, str], bytes | None], tuple[int, bytes]]:
        def fetch(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
            resp = self._call(ep, method, url, headers=headers, body=body, what=f"a token from {url}",
                              authenticate=False)
            return resp.status, _read_all(resp, 1 << 20, f"token from {url}")

        return fetch

    # -- the request core ---------------------------------------------------------------------------

    def _raw(self, ep: _Endpoint, method: str, url: str, headers: Mapping[str, str], body: Any,
             redirect: bool) -> urllib3.BaseHTTPResponse:
        """One HTTP exchange; the body is left unread (callers stream it or :func:`_discard` it)."""
        retries: Retry | bool = (
            Retry(total=None, connect=0, read=0, status=0, other=0, redirect=_MAX_REDIRECTS) if redirect else False
        )
        pos = body.tell() if hasattr(body, "tell") else None
        try:
            return _pool(ep.verify).request(method, url, headers=dict(headers), body=body, retries=retries,
                                            redirect=redirect, preload_content=False,
                                            timeout=self._timeout)
        except HTTPError as exc:
            ssl_failed = isinstance(exc, SSLError) or (isinstance(exc, MaxRetryError)
                                                      and isinstance(exc.reason, SSLError))
            if ssl_failed and ep.http_fallback and url.startswith(f"https://{ep.host}"):
                log.info("registry %s: TLS failed, falling back to plain http (it is insecure)", ep.host)
                ep.scheme, ep.http_fallback = "http", False
                if pos is not None:
                    body.seek(pos)
                return self._raw(ep, method, "http://" + url[len("https://"):], headers, body, redirect)
            raise

    def _send(self, ep: _Endpoint, method: str, url: str, *, scopes: Sequence[str], headers: Mapping[str, str],
              body: Any, redirect: bool, authenticate: bool) -> urllib3.BaseHTTPResponse:
        """One request, authenticated: at most one challenge round (PermissionDenied after that).

        Credentials go only to the endpoint's own host; token requests pass ``authenticate=False``
        (they carry their own header, and the authenticator is busy fetching that very token).
        """
        assert ep.auth is not None
        pos = body.tell() if hasattr(body, "tell") else None
        authenticate = authenticate and urlsplit(url).netloc == ep.host
        auth = ep.auth.header(scopes) if authenticate else None
        retried = False
        while True:
            h = {"User-Agent": _USER_AGENT, **headers}
            if auth:
                h["Authorization"] = auth
            resp = self._raw(ep, method, url, h, body, redirect)
            if resp.status != 401 or not authenticate:
                return resp
            challenges = resp.headers.getlist("WWW-Authenticate")
            detail = _registry_errors(_read_all(resp, 1 << 16, "error body"))
            try:
                auth = ep.auth.challenge(challenges, scopes, auth, retried=retried)
            except PermissionDenied as exc:
                if detail and detail not in str(exc):
                    raise PermissionDenied(f"{exc} [{detail}]") from None
                raise
            retried = True
            if pos is not None:
                body.seek(pos)

    def _call(self, ep: _Endpoint, method: str, url: str, *, scopes: Sequence[str] = (),
              headers: Mapping[str, str] | None = None, body: Any = None, redirect: bool = True,
              tries: int | None = None, what: str = "", authenticate: bool = True) -> urllib3.BaseHTTPResponse:
        """``_send`` with retries and backoff on connection failures, 429 and 5xx.

        Returns the last response (whatever its status) or raises :class:`_Unavailable`.
        """
        tries = self.tries if tries is None else tries
        pos = body.tell() if hasattr(body, "tell") else None
        for attempt in range(tries):
            last = attempt == tries - 1
            if attempt and pos is not None:
                body.seek(pos)
            try:
                resp = self._send(ep, method, url, scopes=scopes, headers=headers or {}, body=body,
                                  redirect=redirect, authenticate=authenticate)
            except (HTTPError, OSError) as exc:
                if last:
                    suffix = f" (tried {tries} times)" if tries > 1 else ""
                    raise _Unavailable(
                        f"cannot reach registry {ep.host}{' for ' + what if what else ''}: {_reason(exc)}{suffix}"
                    ) from None
                log.debug("registry %s: %s %s failed (%s), retrying", ep.host, method, url, _reason(exc))
                time.sleep(self.backoff * 2**attempt)
                continue
            if resp.status in _RETRY_STATUS and not last:
                delay = self.backoff * 2**attempt
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = min(float(retry_after), _MAX_RETRY_AFTER)
                _discard(resp)
                log.debug("registry %s: HTTP %d for %s %s, retrying in %.2fs", ep.host, resp.status, method,
                          url, delay)
                time.sleep(delay)
                continue
            return resp
        raise AssertionError("unreachable")

    def _read(self, method: str, path: str, *, scopes: Sequence[str], headers: Mapping[str, str] | None = None,
              tries: int | None = None, what: str = "") -> tuple[_Endpoint, urllib3.BaseHTTPResponse]:
        """A read request, tried on each mirror first and then on the registry itself."""
        for ep in self._mirrors:
            try:
                resp = self._call(ep, method, ep.url(path), scopes=scopes, headers=headers, tries=tries, what=what)
            except BerthError as exc:
                log.info("mirror %s of %s skipped: %s", ep.host, self.registry, exc)
                continue
            if resp.status < 300 or resp.status in (304, 416):
                return ep, resp
            log.info("mirror %s of %s answered HTTP %d for %s; trying the next", ep.host, self.registry,
                     resp.status, path)
            _discard(resp)
        ep = self._upstream
        return ep, self._call(ep, method, ep.url(path), scopes=scopes, headers=headers, tries=tries, what=what)

    def _fail(self, resp: urllib3.BaseHTTPResponse, what: str, method: str = "") -> BerthError:
        """The error for an unexpected response (the body is consumed)."""
        try:
            body = _read_all(resp, 1 << 16, "error body")
        except (BerthError, HTTPError, OSError):
            body = b""
        detail = _registry_errors(body)
        suffix = f" ({detail})" if detail else ""
        status = resp.status
        if status == 404:
            return NotFound(f"{what} not found{suffix}")
        if status in (401, 403):
            return PermissionDenied(f"{what}: access denied by registry {self.registry}{suffix}")
        if status == 405:
            return Unsupported(f"{what}: registry {self.registry} does not allow {method or 'this request'}{suffix}")
        if status in (400, 411, 413, 415, 422):
            return InvalidArgument(f"{what}: registry {self.registry} refused the request (HTTP {status}){suffix}")
        return BerthError(f"{what}: registry {self.registry} answered HTTP {status}{suffix}")

    def _scopes(self, repo: str, *extra: str) -> list[str]:
        actions = ("pull", "push") if repo in self._push_repos else ("pull",)
        return [repository_scope(repo, *actions), *extra]

    def _name(self, repo: str, reference: str = "") -> str:
        if not reference:
            return f"{self.registry}/{repo}"
        sep = "@" if ":" in reference else ":"
        return f"{self.registry}/{repo}{sep}{reference}"

    # -- general ------------------------------------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: the registry is there, speaks the v2 API, and accepts our credentials."""
        ep = self._upstream
        resp = self._call(ep, "GET", ep.url("/v2/"), scopes=[], what="/v2/")
        try:
            if resp.status != 200:
                raise self._fail(resp, f"registry {self.registry}", "GET /v2/")
        finally:
            _discard(resp)

    def will_push(self, repo: str) -> None:
        """Declare that ``repo`` will be pushed to: later requests for it ask for pull *and* push access,
        so a token server is asked once, not once per action."""
        self._push_repos.add(repo)

    # -- manifests ----------------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str,
                     accept: Sequence[str] = MANIFEST_ACCEPT) -> tuple[bytes, str, Digest]:
        """Fetch a manifest or index by tag or digest: (bytes, media type, digest).

        Fetched by digest, the bytes must hash to it; by tag, to ``Docker-Content-Digest`` when the
        registry sends one. A Docker schema 1 manifest is Unsupported. The bytes are not parsed further.
        """
        name = self._name(repo, reference)
        wanted = _maybe_digest(reference)
        _, resp = self._read("GET", f"/v2/{repo}/manifests/{reference}", scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)}, what=f"image {name}")
        if resp.status != 200:
            raise self._fail(resp, f"image {name}", "GET")
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        header = resp.headers.get("Docker-Content-Digest", "")
        data = _read_all(resp, MAX_MANIFEST_SIZE, f"manifest of {name}")
        media_type = _manifest_media_type(data, content_type, name)
        if wanted is not None:
            if not wanted.matches(data):
                raise InvalidArgument(
                    f"manifest of {name} does not match its digest (got {Digest.from_bytes(data, wanted.algorithm)}); "
                    "the registry or a proxy altered it"
                )
            return data, media_type, wanted
        if header:
            try:
                claimed = Digest.parse(header)
            except (InvalidArgument, Unsupported):
                raise InvalidArgument(f"manifest of {name}: the registry sent an invalid digest {header!r}") from None
            if not claimed.matches(data):
                raise InvalidArgument(
                    f"manifest of {name} does not match the Docker-Content-Digest {claimed} the registry sent"
                )
            return data, media_type, claimed
        return data, media_type, Digest.from_bytes(data)

    def resolve(self, repo: str, reference: str, accept: Sequence[str] = MANIFEST_ACCEPT) -> Descriptor:
        """HEAD a manifest: its descriptor (media type, digest, size) without downloading it, when the
        registry sends ``Docker-Content-Digest``; otherwise the manifest is fetched and hashed."""
        name = self._name(repo, reference)
        _, resp = self._read("HEAD", f"/v2/{repo}/manifests/{reference}", scopes=self._scopes(repo),
                             headers={"Accept": ", ".join(accept)}, what=f"image {name}")
        if resp.status == 200:
            header = resp.headers.get("Docker-Content-Digest", "")
            length = resp.headers.get("Content-Length", "")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            _discard(resp)
            if header and length.isdigit() and media_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
                try:
                    return Descriptor(media_type, Digest.parse(header), int(length))
                except (InvalidArgument, Unsupported):
                    pass
        elif resp.status != 405:
            raise self._fail(resp, f"image {name}", "HEAD")
        else:
            _discard(resp)
        data, media_type, digest = self.get_manifest(repo, reference, accept)
        return Descriptor(media_type, digest, len(data))

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> Digest:
        """PUT a manifest under a tag or its digest; return its digest (checked against the registry's)."""
        self.will_push(repo)
        by_digest = _maybe_digest(reference)
        digest = Digest.from_bytes(data, by_digest.algorithm if by_digest else "sha256")
        if by_digest is not None and by_digest != digest:
            raise InvalidArgument(f"manifest bytes have digest {digest}, not {reference}")
        name = self._name(repo, reference)
        ep = self._upstream
        resp = self._call(ep, "PUT", ep.url(f"/v2/{repo}/manifests/{reference}"), scopes=self._scopes(repo),
                          headers={"Content-Type": media_type, "Content-Length": str(len(data))}, body=data,
                          redirect=False, what=f"manifest {name}")
        try:
            if resp.status not in (200, 201, 202):
                raise self._fail(resp, f"pushing manifest {name}", "PUT")
            header = resp.headers.get("Docker-Content-Digest", "")
            if header and header != str(digest):
                raise BerthError(f"pushing manifest {name}: the registry stored it as {header}, expected {digest}")
        finally:
            _discard(resp)
        return digest

    def list_tags(self, repo: str, page_size: int | None = None) -> list[str]:
        """All tags of ``repo``, following ``Link: <…>; rel="next"`` pagination."""
        path = f"/v2/{repo}/tags/list" + (f"?n={page_size}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        while path and path not in seen:
            seen.add(path)
            ep, resp = self._read("GET", path, scopes=self._scopes(repo),
                                  what=f"tags of {self._name(repo)}")
            if resp.status != 200:
                raise self._fail(resp, f"repository {self._name(repo)}", "GET")
            link = resp.headers.get("Link", "")
            data = _read_all(resp, 16 << 20, f"tags of {self._name(repo)}")
            try:
                doc = json.loads(data)
                page = doc.get("tags") or []
            except (ValueError, AttributeError):
                raise InvalidArgument(f"tags of {self._name(repo)}: the registry sent invalid JSON") from None
            tags.extend(t for t in page if isinstance(t, str))
            match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
            path = ""
            if match:
                target = urlsplit(urljoin(ep.url(f"/v2/{repo}/tags/list"), match.group(1)))
                path = target.path + (f"?{target.query}" if target.query else "")
        return tags

    # -- blobs: pull --------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        """HEAD the blob in ``repo``."""
        ep = self._upstream
        resp = self._call(ep, "HEAD", ep.url(f"/v2/{repo}/blobs/{digest}"), scopes=self._scopes(repo),
                          what=f"blob {digest}")
        _discard(resp)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._fail(resp, f"blob {digest} in {self._name(repo)}", "HEAD")

    def fetch_blob(self, repo: str, descriptor: Descriptor, store: ContentStore, *,
                   progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                   on_stream: Callable[[Follower], None] | None = None) -> bool:
        """Download a blob into ``store``, verified; return False if it was there already.

        The ingest ref is ``pull-<digest>``, so a download interrupted here, in another thread or in a
        killed process resumes where it stopped (``Range``). A mismatch of size or digest raises
        InvalidArgument and nothing is kept. ``cancel`` stops the transfer early (partial data kept).
        ``on_stream(reader)``, called before the download starts, gets a reader of the blob's bytes as
        they arrive (:meth:`~berth.content.store.Writer.follow`): it ends only after the digest is verified.
        """
        digest, size = descriptor.digest, descriptor.size
        name = self._name(repo)
        if store.exists(digest):
            _emit(progress, digest, size, size, "exists")
            return False
        try:
            writer = store.writer(f"pull-{digest}", digest, size, timeout=self.ingest_wait)
        except AlreadyExists:
            _emit(progress, digest, size, size, "exists")
            return False
        with writer:
            if on_stream is not None:
                on_stream(writer.follow())
            failures = 0
            while writer.offset < size or size == 0:
                start = writer.offset
                try:
                    self._download(repo, digest, size, writer, progress, cancel)
                    if writer.offset >= size:
                        break
                    raise _Transient("the registry closed the stream early")
                except TransferCancelled:
                    raise
                except _Transient as exc:
                    failures = 0 if writer.offset > start else failures + 1
                    if failures >= self.tries:
                        raise BerthError(
                            f"blob {digest} of {name}: download failed after {self.tries} tries: {exc}"
                        ) from None
                    _emit(progress, digest, writer.offset, size, "retrying")
                    log.info("blob %s of %s: %s; resuming at %d", digest, name, exc, writer.offset)
                    time.sleep(self.backoff * 2 ** max(0, failures - 1))
                except _TooLong as exc:
                    writer.abort()
                    raise InvalidArgument(f"blob {digest} of {name} is corrupt: {exc}; nothing was kept") from None
            try:
                writer.commit()
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"blob {digest} of {name} does not match its digest: {_after_colon(exc)}; nothing was kept"
                ) from None
        _emit(progress, digest, size, size, "done")
        return True

    def _download(self, repo: str, digest: Digest, size: int, writer: Any, progress: ProgressCallback | None,
                  cancel: threading.Event | None) -> None:
        offset = writer.offset
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            _, resp = self._read("GET", f"/v2/{repo}/blobs/{digest}", scopes=self._scopes(repo), headers=headers,
                                 tries=1, what=f"blob {digest}")
        except _Unavailable as exc:
            raise _Transient(str(exc)) from None
        try:
            if resp.status in _RETRY_STATUS:
                raise _Transient(f"HTTP {resp.status}")
            if resp.status == 416:
                writer.truncate(0)
                raise _Transient("the registry refused to resume (HTTP 416); starting over")
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                match = re.match(r"bytes\s+(\d+)-", content_range)
                if match is None or int(match.group(1)) != offset:
                    writer.truncate(0)
                    raise _Transient(f"the registry resumed at the wrong place ({content_range!r}); starting over")
            elif resp.status == 200:
                if offset:
                    log.info("blob %s: the registry ignored Range; downloading it again from the start", digest)
                    writer.truncate(0)
            else:
                raise self._fail(resp, f"blob {digest} of {self._name(repo)}", "GET")
            _emit(progress, digest, writer.offset, size, "downloading")
            for chunk in resp.stream(_STREAM_CHUNK, decode_content=False):
                if cancel is not None and cancel.is_set():
                    raise TransferCancelled(f"download of blob {digest} cancelled at {writer.offset} bytes")
                try:
                    writer.write(chunk)
                except InvalidArgument as exc:
                    raise _TooLong(str(exc)) from None
                _emit(progress, digest, writer.offset, size, "downloading")
        except (HTTPError, OSError) as exc:
            raise _Transient(_reason(exc)) from None
        finally:
            _discard(resp)

    # -- blobs: push --------------------------------------------------------------------------------

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> bool:
        """Cross-repository mount of ``digest`` from ``from_repo`` into ``repo`` (same registry).

        True when mounted (201). False when the registry opened an upload instead (202; it is
        cancelled) or does not know the blob there.
        """
        self.will_push(repo)
        ep = self._upstream
        query = urlencode([("mount", str(digest)), ("from", from_repo)])
        resp = self._call(ep, "POST", ep.url(f"/v2/{repo}/blobs/uploads/?{query}"),
                          scopes=self._scopes(repo, repository_scope(from_repo, "pull")),
                          headers={"Content-Length": "0"}, redirect=False, what=f"mount of {digest}")
        _discard(resp)
        if resp.status == 201:
            return True
        if resp.status == 202:
            location = resp.headers.get("Location")
            if location:
                self._cancel_upload(ep, urljoin(ep.url("/"), location), repo)
            return False
        if resp.status in (404, 405):
            return False
        raise self._fail(resp, f"mounting blob {digest} into {self._name(repo)}", "POST")

    def push_blob(self, repo: str, descriptor: Descriptor, store: ContentStore, *, chunk_size: int | None = None,
                  progress: ProgressCallback | None = None) -> None:
        """Upload a blob from ``store`` to ``repo``.

        Monolithic (POST, then one PUT ``?digest=`` with the body) by default; with ``chunk_size``,
        chunked (PATCH with ``Content-Range`` per chunk, then the closing PUT). A failed upload is
        retried from the start, in a new session, up to ``tries`` times.
        """
        self.will_push(repo)
        digest = descriptor.digest
        name = self._name(repo)
        for attempt in range(self.tries):
            try:
                self._upload(repo, descriptor, store, chunk_size, progress)
                _emit(progress, digest, descriptor.size, descriptor.size, "done")
                return
            except _Unavailable as exc:
                if attempt == self.tries - 1:
                    raise BerthError(f"pushing blob {digest} to {name} failed after {self.tries} tries: "
                                     f"{_after_colon(exc)}") from None
                _emit(progress, digest, 0, descriptor.size, "retrying")
                time.sleep(self.backoff * 2**attempt)

    def _upload(self, repo: str, descriptor: Descriptor, store: ContentStore, chunk_size: int | None,
                progress: ProgressCallback | None) -> None:
        digest, size = descriptor.digest, descriptor.size
        name = self._name(repo)
        what = f"pushing blob {digest} to {name}"
        ep = self._upstream
        scopes = self._scopes(repo)
        resp = self._call(ep, "POST", ep.url(f"/v2/{repo}/blobs/uploads/"), scopes=scopes,
                          headers={"Content-Length": "0"}, redirect=False, what=what)
        _discard(resp)
        if resp.status != 202 or not resp.headers.get("Location"):
            raise self._fail(resp, what, "POST")
        location = urljoin(ep.url(f"/v2/{repo}/blobs/uploads/"), resp.headers["Location"])
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length", "")
        if chunk_size is not None and min_chunk.isdigit():
            chunk_size = max(chunk_size, int(min_chunk))
        with store.open(digest) as f:
            _emit(progress, digest, 0, size, "uploading")
            if chunk_size is not None and chunk_size > 0 and size > 0:
                offset = 0
                while offset < size:
                    data = f.read(min(chunk_size, size - offset))
                    if not data:
                        raise BerthError(f"{what}: the stored blob is shorter than its descriptor says")
                    end = offset + len(data) - 1
                    resp = self._call(ep, "PATCH", location, scopes=scopes, body=data, tries=1, redirect=False,
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Range": f"{offset}-{end}",
                                               "Content-Length": str(len(data))}, what=what)
                    _discard(resp)
                    if resp.status in _RETRY_STATUS:
                        raise _Unavailable(f"{what}: HTTP {resp.status}")
                    if resp.status != 202:
                        raise self._fail(resp, what, "PATCH")
                    got = resp.headers.get("Range", "")
                    if got and got.rpartition("-")[2] != str(end):
                        raise _Unavailable(f"{what}: the registry holds range {got}, expected 0-{end}")
                    if resp.headers.get("Location"):
                        location = urljoin(location, resp.headers["Location"])
                    offset = end + 1
                    _emit(progress, digest, offset, size, "uploading")
                body: Any = b""
                headers = {"Content-Length": "0"}
            else:
                body = f
                headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            resp = self._call(ep, "PUT", _with_query(location, [("digest", str(digest))]), scopes=scopes,
                              body=body, headers=headers, tries=1, redirect=False, what=what)
        _discard(resp)
        if resp.status in _RETRY_STATUS:
            raise _Unavailable(f"{what}: HTTP {resp.status}")
        if resp.status not in (201, 204):
            raise self._fail(resp, what, "PUT")
        stored = resp.headers.get("Docker-Content-Digest", "")
        if stored and stored != str(digest):
            raise BerthError(f"{what}: the registry stored it as {stored}")

    def _cancel_upload(self, ep: _Endpoint, location: str, repo: str) -> None:
        try:
            resp = self._call(ep, "DELETE", location, scopes=self._scopes(repo), tries=1, redirect=False,
                              what="cancelling an upload")
            _discard(resp)
        except BerthError as exc:  # the registry purges abandoned uploads itself
            log.debug("cancelling upload %s: %s", location, exc)


def _after_colon(exc: BaseException) -> str:
    """The reason part of a ``thing: reason`` message (to re-word it with a better subject)."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


def _manifest_media_type(data: bytes, content_type: str, name: str) -> str:
    """The media type of fetched manifest bytes: the document's own ``mediaType``, else the
    Content-Type, else its shape. Schema 1 is refused here, before anyone tries to parse it."""
    schema1 = Unsupported(
        f"image {name} has a Docker schema 1 manifest, which berth does not support; "
        "push it again as schema 2 or OCI (e.g. skopeo copy --format v2s2)"
    )
    if content_type in SCHEMA1_MEDIA_TYPES:
        raise schema1
    try:
        doc = json.loads(data)
    except ValueError:
        return content_type  # the caller's parser reports the malformed JSON
    if not isinstance(doc, dict):
        return content_type
    if doc.get("schemaVersion") == 1:
        raise schema1
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        if declared in SCHEMA1_MEDIA_TYPES:
            raise schema1
        return declared
    if content_type in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
        return content_type
    if "manifests" in doc:
        return MEDIA_TYPE_IMAGE_INDEX
    if "config" in doc:
        return MEDIA_TYPE_IMAGE_MANIFEST
    return content_type
