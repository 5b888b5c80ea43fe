"""Image references, parsed and normalised the way Docker does.

Grammar (Docker's distribution reference, which the distribution spec's ``<name>`` and tag rules match)::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path
    domain      := host [ ":" port ]
    host        := domain-name | "[" ipv6 "]"
    domain-name := component ( "." component )*      component := [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?
    path        := path-component ( "/" path-component )*
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

Normalisation: the first ``/``-separated part is a registry only if it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the registry is ``docker.io``. ``index.docker.io``
becomes ``docker.io``, and a one-component path on ``docker.io`` gets the ``library/`` prefix. With
neither tag nor digest, the tag ``latest`` is implied. ``str()`` gives the full form
(``docker.io/library/busybox:latest``); :meth:`Reference.familiar` the short one (``busybox:latest``).
"""

from __future__ import annotations

from berth.errors import InvalidArgument, Unsupported
from berth.oci.digest import HEX, Digest
from berth.record import record

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
#: Longest ``domain/path`` Docker accepts.
NAME_MAX = 255

# The grammar is checked with character sets rather than `re`, which `berth run` would otherwise
# import (with enum) only to read an image name.
_DIGITS = frozenset("0123456789")
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz") | _DIGITS
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TAG_FIRST = _ALNUM | {"_"}
_TAG_CHARS = _TAG_FIRST | frozenset(".-")
_IPV6_CHARS = HEX | frozenset("ABCDEF:")


def _is_image_id(text: str) -> bool:
    return len(text) == 64 and HEX.issuperset(text)


def _is_domain_component(part: str) -> bool:
    """[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"""
    return bool(part) and part[0] in _ALNUM and part[-1] in _ALNUM and (_ALNUM | {"-"}).issuperset(part)


def _is_domain(domain: str) -> bool:
    """host[:port], host being dotted components or a bracketed IPv6 literal."""
    if domain.startswith("["):
        close = domain.find("]")
        host, port_part = domain[1:close], domain[close + 1 :]
        if close < 0 or not host or not _IPV6_CHARS.issuperset(host):
            return False
    else:
        host, colon, port = domain.partition(":")
        port_part = colon + port
        if not all(_is_domain_component(part) for part in host.split(".")):
            return False
    return not port_part or (port_part[0] == ":" and len(port_part) > 1 and _DIGITS.issuperset(port_part[1:]))


def _is_path_component(component: str) -> bool:
    """[a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*"""
    if not component or component[0] not in _LOWER_ALNUM or component[-1] not in _LOWER_ALNUM:
        return False
    separator = ""
    for ch in component:
        if ch in _LOWER_ALNUM:
            separator = ""
            continue
        separator += ch
        if separator not in (".", "_", "__") and separator != "-" * len(separator):
            return False
    return True


def _is_tag(tag: str) -> bool:
    return 0 < len(tag) <= 128 and tag[0] in _TAG_FIRST and _TAG_CHARS.issuperset(tag)


@record(frozen=True)
class Reference:
    """A normalised image reference: ``domain``/``path`` with an optional ``tag`` and ``digest``."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        _validate(self.domain, self.path, self.tag, self.digest, str(self))

    # -- parsing ------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
        """Parse and normalise ``text``; with neither tag nor digest, ``default_tag`` is applied."""
        if not isinstance(text, str):
            raise InvalidArgument(f"invalid reference {text!r}: must be a string")
        if not text:
            raise InvalidArgument("invalid reference format: the reference is empty")
        if _is_image_id(text):
            raise InvalidArgument(
                f"invalid reference {text!r}: a 64-character hex string is an image id, "
                "not a repository name"
            )
        rest, at, digest_text = text.partition("@")
        digest = None
        if at:
            if not digest_text:
                raise InvalidArgument(f"invalid reference {text!r}: empty digest after '@'")
            try:
                digest = Digest.parse(digest_text)
            except InvalidArgument as exc:
                raise InvalidArgument(f"invalid reference {text!r}: {exc}") from None
            except Unsupported as exc:
                raise Unsupported(f"invalid reference {text!r}: {exc}") from None
        tag = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            _check_tag(tag, text)
        if not rest:
            raise InvalidArgument(f"invalid reference {text!r}: the repository name is empty")
        domain, path = _split_domain(rest)
        if path != path.lower():
            raise InvalidArgument(f"invalid reference {text!r}: repository name {path!r} must be lowercase")
        if tag is None and digest is None:
            tag = default_tag
        _validate(domain, path, tag, digest, text)
        return cls(domain, path, tag, digest)

    # -- views --------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``domain/path``: the repository, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it: ``busybox``, ``user/app``, ``quay.io/org/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_PREFIX) and "/" not in self.path[len(OFFICIAL_PREFIX) :]:
            return self.path[len(OFFICIAL_PREFIX) :]
        return self.path

    def familiar(self) -> str:
        """The short form: ``busybox:latest``, ``localhost:5000/app@sha256:…``."""
        return self._render_name(self.familiar_name, self.tag, self.digest)

    def __str__(self) -> str:
        return self._render_name(self.name, self.tag, self.digest)

    @property
    def api_reference(self) -> str:
        """The ``<reference>`` of distribution-spec URLs: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    def with_tag(self, tag: str | None) -> Reference:
        return Reference(self.domain, self.path, tag, self.digest)

    def with_digest(self, digest: Digest | None) -> Reference:
        return Reference(self.domain, self.path, self.tag, digest)

    @property
    def host(self) -> str:
        """The registry host without port or IPv6 brackets: ``localhost``, ``::1``, ``quay.io``."""
        domain = self.domain
        if domain.startswith("["):
            return domain[1 : domain.index("]")]
        return domain.rpartition(":")[0] if ":" in domain else domain

    @property
    def port(self) -> int | None:
        tail = self.domain.rpartition("]")[2] if self.domain.startswith("[") else self.domain
        if ":" not in tail:
            return None
        return int(tail.rpartition(":")[2])

    def is_loopback(self) -> bool:
        """Whether the registry is on this machine (localhost, 127.0.0.0/8, ::1): plain http by default."""
        host = self.host.lower()
        if host == "localhost":
            return True
        import ipaddress

        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _render_name(name: str, tag: str | None, digest: Digest | None) -> str:
        text = name
        if tag is not None:
            text += f":{tag}"
        if digest is not None:
            text += f"@{digest}"
        return text


def parse_reference(text: str, *, default_tag: str | None = DEFAULT_TAG) -> Reference:
    """Shorthand for :meth:`Reference.parse`."""
    return Reference.parse(text, default_tag=default_tag)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, remainder
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def _validate(domain: str, path: str, tag: str | None, digest: Digest | None, text: str) -> None:
    _check_domain(domain, text)
    _check_path(path, text)
    if tag is not None:
        _check_tag(tag, text)
    if digest is not None and not isinstance(digest, Digest):
        raise InvalidArgument(f"invalid reference {text!r}: digest must be a Digest")
    if len(domain) + 1 + len(path) > NAME_MAX:
        raise InvalidArgument(
            f"invalid reference {text!r}: repository name is longer than {NAME_MAX} characters"
        )


def _check_domain(domain: str, text: str) -> None:
    if not isinstance(domain, str) or not _is_domain(domain):
        raise InvalidArgument(
            f"invalid reference {text!r}: registry {domain!r} is not a valid host[:port]"
        )
    if domain.startswith("["):
        import ipaddress

        inner = domain[1 : domain.index("]")]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidArgument(
                f"invalid reference {text!r}: registry {domain!r} is not a valid IPv6 address"
            ) from None


def _check_path(path: str, text: str) -> None:
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"invalid reference {text!r}: the repository name is empty")
    for component in path.split("/"):
        if not _is_path_component(component):
            if component and component.lower() != component:
                reason = "must be lowercase"
            else:
                reason = (
                    "must be lowercase letters and digits, separated by '.', '_', '__' or dashes"
                )
            raise InvalidArgument(
                f"invalid reference {text!r}: repository name component {component!r} {reason}"
            )


def _check_tag(tag: str, text: str) -> None:
    if not isinstance(tag, str) or not _is_tag(tag):
        raise InvalidArgument(
            f"invalid reference {text!r}: tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], "
            "not starting with '.' or '-'"
        )
