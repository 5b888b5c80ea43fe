"""Registry credentials and the HTTP authentication dance (basic and bearer token).

Why here and not in the client: credentials come from files other programs write (Docker's
``config.json``, credential helpers), and the token flow has its own cache and rules; keeping both apart
from transport keeps the client about HTTP only.

Where credentials come from, first match wins:

1. berth's own auth file, ``$BERTH_AUTH_FILE``, else ``$XDG_CONFIG_HOME/berth/auth.json``, else
   ``~/.config/berth/auth.json``. It has Docker's ``config.json`` format and is what :func:`login`
   writes (``berth login``).
2. Docker's ``config.json`` (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``).

Within one file Docker's precedence applies: ``credHelpers[registry]``, then ``credsStore``, then the
``auths`` entry (``{"auth": base64("user:password")}``, or ``username``/``password``, or
``identitytoken``). A helper is run as ``docker-credential-<name> get`` with the server address on
stdin and answers ``{"Username": ..., "Secret": ...}``; a ``Username`` of ``<token>`` means the secret is
an identity (refresh) token. A helper that is missing or fails is skipped with a warning, so a broken
desktop helper does not stop anonymous pulls.

Keys of ``auths`` are matched loosely, as Docker does: ``https://host:port/v1/``, ``http://host`` and
``host:port`` all name ``host:port``; ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` are
one registry, stored under Docker's historical key ``https://index.docker.io/v1/``.

Authentication (distribution-spec, docker-distribution auth/token.md): a request is first sent
anonymously; a 401 carries ``WWW-Authenticate``. ``Basic`` → the credentials are sent with every later
request. ``Bearer realm=…,service=…,scope=…`` → a token is fetched from the realm (GET with basic
credentials when there are some, or an OAuth2 POST with an identity token), read from ``token`` or
``access_token``, and cached per set of scopes until ``expires_in`` (default 60 s) runs out.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from berth.errors import BerthError, InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
#: The key Docker itself uses for Docker Hub in config.json.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_HELPER_TIMEOUT = 30.0
#: A token is renewed this many seconds before it expires, so a request never carries a stale one.
_TOKEN_SLACK = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0


# --- credentials ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity token (OAuth2 refresh token). Empty: anonymous."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.password or self.identity_token)

    def basic(self) -> str:
        """The value of an ``Authorization: Basic`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


#: Explicitly no credentials (as opposed to None: "look them up").
ANONYMOUS = Credentials()


def normalize_registry(key: str) -> str:
    """The registry a config.json key or a user's argument names: ``host[:port]``, lower-case.

    ``https://index.docker.io/v1/`` → ``docker.io``; ``http://localhost:5000/`` → ``localhost:5000``.
    """
    text = key.strip()
    text = (urlsplit(text).netloc or text) if "://" in text else text.split("/", 1)[0]
    text = text.lower()
    if text in _HUB_ALIASES:
        return DOCKER_HUB
    return text


def auth_file_path() -> Path:
    """berth's own auth file: ``$BERTH_AUTH_FILE``, else ``$XDG_CONFIG_HOME/berth/auth.json``, else
    ``~/.config/berth/auth.json``."""
    explicit = os.environ.get("BERTH_AUTH_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "berth" / "auth.json"


def docker_config_path() -> Path:
    """Docker's config file: ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def lookup(registry: str, *, files: Iterable[Path] | None = None) -> Credentials | None:
    """The credentials stored for ``registry`` (a reference's domain), or None."""
    wanted = normalize_registry(registry)
    for path in files if files is not None else (auth_file_path(), docker_config_path()):
        doc = _read_config(path)
        if doc is None:
            continue
        creds = _from_config(doc, wanted, path)
        if creds is not None:
            return creds
    return None


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read credentials file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"credentials file {path}: expected a JSON object")
    return doc


def _from_config(doc: dict[str, Any], registry: str, path: Path) -> Credentials | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(helper, str) and helper and normalize_registry(key) == registry:
                creds = _from_helper(helper, _server_address(key, registry))
                if creds is not None:
                    return creds
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        creds = _from_helper(store, _server_address(None, registry))
        if creds is not None:
            return creds
    auths = doc.get("auths")
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if isinstance(entry, dict) and normalize_registry(key) == registry:
                creds = _from_entry(entry, key, path)
                if creds is not None:
                    return creds
    return None


def _from_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials | None:
    raw_token = entry.get("identitytoken")
    token = raw_token if isinstance(raw_token, str) else ""
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"credentials file {path}: auths[{key!r}].auth is not base64 of user:password") \
                from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument(f"credentials file {path}: auths[{key!r}].auth is not user:password")
        return Credentials(user, password, token)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name:
        return Credentials(name, secret if isinstance(secret, str) else "", token)
    if token:
        return Credentials(identity_token=token)
    return None


def _server_address(key: str | None, registry: str) -> str:
    """What to hand a credential helper: the key as written, else Docker's form of the registry."""
    if key:
        return key
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def _from_helper(helper: str, server: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s failed for %s: %s", program, server, exc)
        return None
    if proc.returncode != 0:
        message = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if "credentials not found" not in message.lower():
            log.warning("credential helper %s failed for %s: %s", program, server, message)
        return None
    try:
        answer = json.loads(proc.stdout)
        user, secret = answer.get("Username", ""), answer.get("Secret", "")
    except (ValueError, AttributeError):
        log.warning("credential helper %s returned something that is not JSON", program)
        return None
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret)


# --- login / logout ---------------------------------------------------------------------------------


def _entry_key(registry: str) -> str:
    name = normalize_registry(registry)
    return DOCKER_HUB_KEY if name == DOCKER_HUB else name


def login(registry: str, username: str, password: str, *, path: Path | None = None) -> Path:
    """Store ``username``/``password`` for ``registry`` in berth's auth file; return its path.

    Other entries and keys are kept. The file is replaced atomically and is readable by its owner only.
    Checking that the credentials work is the caller's job (:meth:`RegistryClient.ping`).
    """
    if not username or ":" in username:
        raise InvalidArgument(f"invalid user name {username!r}: must be non-empty and contain no ':'")
    target = path or auth_file_path()
    doc = _read_config(target) or {}
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise InvalidArgument(f"credentials file {target}: 'auths' must be an object")
    wanted = normalize_registry(registry)
    for key in [k for k in auths if normalize_registry(k) == wanted]:
        del auths[key]
    auths[_entry_key(registry)] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}
    _write_atomic(target, doc)
    return target


def logout(registry: str, *, path: Path | None = None) -> bool:
    """Remove the entries for ``registry`` from berth's auth file; whether there was one."""
    target = path or auth_file_path()
    doc = _read_config(target)
    if doc is None or not isinstance(doc.get("auths"), dict):
        return False
    wanted = normalize_registry(registry)
    keys = [k for k in doc["auths"] if normalize_registry(k) == wanted]
    if not keys:
        return False
    for key in keys:
        del doc["auths"][key]
    _write_atomic(target, doc)
    return True


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    from berth.fsutil import atomic_file

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_file(path, 0o600) as f:
        f.write((json.dumps(doc, indent="\t") + "\n").encode())


# --- WWW-Authenticate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a scheme (lower-case) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Parse RFC 7235 challenges: ``Bearer realm="…",service="…", Basic realm="…"``.

    Several challenges may share one header value or come in several headers. Parameter names are
    lower-cased; quoted values are unescaped. (Token68 credentials, which registries do not use, are
    read as a scheme without parameters.)
    """
    if isinstance(values, str):
        values = [values]
    result: list[Challenge] = []
    for value in values:
        result.extend(_parse_challenges(value))
    return result


def _parse_challenges(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    i, n = 0, len(text)
    current: Challenge | None = None
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] not in " \t,=":
            i += 1
        word = text[start:i]
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=" and current is not None and not text.startswith("==", j):
            # auth-param: name = token / quoted-string
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                j += 1
                chars: list[str] = []
                while j < n and text[j] != '"':
                    if text[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(text[j])
                    j += 1
                value = "".join(chars)
                j += 1  # the closing quote
            else:
                vstart = j
                while j < n and text[j] not in " \t,":
                    j += 1
                value = text[vstart:j]
            current.params[word.lower()] = value
            i = j
            continue
        current = Challenge(word.lower(), {})
        challenges.append(current)
        i = j
    return challenges


# --- the authenticator ------------------------------------------------------------------------------


def repository_scope(repository: str, *actions: str) -> str:
    """A token scope (auth/scope.md): ``repository:<name>:<action>[,<action>]``."""
    return f"repository:{repository}:{','.join(actions or ('pull',))}"


#: fetch(method, url, headers, body) -> (status, body): the transport the authenticator uses for token
#: requests (the client supplies it, with its TLS settings and retries).
TokenFetch = Callable[[str, str, dict[str, str], bytes | None], tuple[int, bytes]]


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()


class Authenticator:
    """Authentication state for one registry endpoint, shared by every thread using it.

    :meth:`header` gives the ``Authorization`` value to send for a set of scopes (None before any
    challenge was seen, so the first request is anonymous). :meth:`challenge` handles a 401 and returns
    the header to retry with, or raises PermissionDenied with the reason in one line.
    """

    def __init__(self, registry: str, credentials: Credentials | None, fetch: TokenFetch) -> None:
        self.registry = registry
        self.credentials = credentials or ANONYMOUS
        self._fetch = fetch
        self._lock = threading.Lock()
        self._scheme: str | None = None  # "basic" or "bearer" once a challenge was seen
        self._bearer: dict[str, str] = {}
        self._challenge_scopes: set[str] = set()
        self._tokens: dict[tuple[str, ...], _Token] = {}

    # -- public -------------------------------------------------------------------------------------

    def header(self, scopes: Iterable[str]) -> str | None:
        with self._lock:
            if self._scheme == "basic":
                return self.credentials.basic() if self.credentials else None
            if self._scheme == "bearer":
                return "Bearer " + self._token_locked(self._key(scopes))
        return None

    def challenge(self, values: Iterable[str], scopes: Iterable[str], sent: str | None, *,
                  retried: bool = False) -> str:
        """React to a 401 whose ``WWW-Authenticate`` headers are ``values``; return the header to retry with.

        ``sent`` is the ``Authorization`` value the refused request carried; ``retried`` says it was
        already the answer to a challenge, so a second refusal is final (PermissionDenied).
        """
        challenges = parse_www_authenticate(values)
        by_scheme = {c.scheme: c for c in challenges}
        scopes = list(scopes)
        with self._lock:
            bearer = by_scheme.get("bearer")
            if bearer is not None and bearer.params.get("realm"):
                params = bearer.params
                self._scheme = "bearer"
                self._bearer = {"realm": params["realm"], "service": params.get("service", "")}
                extra = [s for s in params.get("scope", "").split(" ") if s]
                key = self._key([*scopes, *extra])
                self._tokens.pop(key, None)
                if retried:
                    reason = params.get("error_description") or params.get("error") or "unauthorized"
                    raise PermissionDenied(
                        f"registry {self.registry}: access to {' '.join(key) or 'the registry'} denied"
                        f"{self._as_user()} ({reason})"
                    )
                return "Bearer " + self._token_locked(key)
            if "basic" in by_scheme:
                self._scheme = "basic"
                if not self.credentials.username:
                    raise PermissionDenied(
                        f"registry {self.registry} requires authentication: log in with berth login {self.registry}"
                    )
                header = self.credentials.basic()
                if retried or sent == header:
                    raise PermissionDenied(
                        f"registry {self.registry}: authentication failed{self._as_user()}: "
                        "wrong user name or password"
                    )
                return header
        schemes = ", ".join(sorted(by_scheme)) or "none"
        raise PermissionDenied(
            f"registry {self.registry}: unauthorized, and it offers no supported authentication scheme ({schemes})"
        )

    # -- internals ----------------------------------------------------------------------------------

    def _as_user(self) -> str:
        return f" as {self.credentials.username}" if self.credentials.username else ""

    @staticmethod
    def _key(scopes: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({s for s in scopes if s}))

    def _token_locked(self, key: tuple[str, ...]) -> str:
        cached = self._tokens.get(key)
        if cached is not None and cached.expires - _TOKEN_SLACK > time.monotonic():
            return cached.value
        token = self._request_token(key)
        self._tokens[key] = token
        return token.value

    def _request_token(self, scopes: tuple[str, ...]) -> _Token:
        realm = self._bearer["realm"]
        service = self._bearer.get("service", "")
        creds = self.credentials
        started = time.monotonic()
        if creds.identity_token:
            form: list[tuple[str, str]] = [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                                           ("client_id", "berth")]
            if service:
                form.append(("service", service))
            if scopes:
                form.append(("scope", " ".join(scopes)))
            status, body = self._fetch(
                "POST", realm, {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(form).encode()
            )
        else:
            query: list[tuple[str, str]] = []
            if service:
                query.append(("service", service))
            query.extend(("scope", s) for s in scopes)
            headers: dict[str, str] = {}
            if creds and creds.username:
                headers["Authorization"] = creds.basic()
                query.append(("account", creds.username))
            url = realm + (("&" if "?" in realm else "?") + urlencode(query) if query else "")
            status, body = self._fetch("GET", url, headers, None)
        if status in (401, 403):
            if creds:
                raise PermissionDenied(
                    f"registry {self.registry}: the token server {realm} refused the credentials"
                    f"{self._as_user()}: wrong user name or password"
                )
            raise PermissionDenied(
                f"registry {self.registry} requires authentication (token server {realm}): "
                f"log in with berth login {self.registry}"
            )
        if status != 200:
            raise BerthError(f"registry {self.registry}: token server {realm} answered HTTP {status}")
        try:
            doc = json.loads(body)
        except ValueError:
            raise BerthError(f"registry {self.registry}: token server {realm} answered with invalid JSON") from None
        value = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise BerthError(f"registry {self.registry}: token server {realm} sent no token")
        return _Token(value, _expiry(doc, started))


def _expiry(doc: dict[str, Any], started: float) -> float:
    """When (monotonic) a token expires: ``issued_at`` + ``expires_in``, defaulting to 60 seconds."""
    lifetime = doc.get("expires_in")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = _DEFAULT_TOKEN_LIFETIME
    issued = doc.get("issued_at")
    if isinstance(issued, str) and issued:
        with contextlib.suppress(ValueError):
            age = time.time() - datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
            if 0 <= age < lifetime:
                return time.monotonic() + lifetime - age
    return started + float(lifetime)
