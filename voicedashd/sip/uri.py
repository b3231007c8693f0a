"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966): parse and format; no I/O."""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass, field

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?")
_PORT = re.compile(r"[0-9]{1,5}")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#().\-pPwW]+")
_URI_DELIMITER = re.compile(r"[ \t\r\n<>\"\x00]")
_TEL_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")

_UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
_USER_CHARS = frozenset(_UNRESERVED + "&=+$,;?/")
_PASSWORD_CHARS = frozenset(_UNRESERVED + "&=+$,")
_PARAM_CHARS = frozenset(_UNRESERVED + "[]/:&+$")
_HEADER_CHARS = frozenset(_UNRESERVED + "[]/?:+$")
_TEL_PARAM_CHARS = frozenset(_UNRESERVED + "[]/:&+$%")


class InvalidUri(ValueError):
    """The text is not a well-formed URI of its scheme."""


class UnsupportedUriScheme(ValueError):
    """The URI scheme is not sip, sips or tel (a UAS answers 416)."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"unsupported URI scheme {scheme!r}")
        self.scheme = scheme


@dataclass(slots=True)
class SipUri:
    """A sip: or sips: URI; user and password are unescaped, host has no IPv6 brackets."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str | None:
        """The transport URI parameter, lower-cased, or None."""
        value = self.params.get("transport")
        return None if value is None else value.lower()

    @property
    def lr(self) -> bool:
        """True if the lr (loose routing) parameter is present."""
        return "lr" in self.params

    def format(self) -> str:
        """Return the URI as text, escaping what needs escaping."""
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_escape(self.user, _USER_CHARS))
            if self.password is not None:
                out.append(":" + _escape(self.password, _PASSWORD_CHARS))
            out.append("@")
        out.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for name, value in self.params.items():
            out.append(";" + _escape(name, _PARAM_CHARS))
            if value is not None:
                out.append("=" + _escape(value, _PARAM_CHARS))
        if self.headers:
            pairs = (
                f"{_escape(k, _HEADER_CHARS)}={_escape(v, _HEADER_CHARS)}"
                for k, v in self.headers.items()
            )
            out.append("?" + "&".join(pairs))
        return "".join(out)

    def __str__(self) -> str:
        return self.format()


@dataclass(slots=True)
class TelUri:
    """A tel: URI (RFC 3966): the number as written and its parameters."""

    number: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def digits(self) -> str:
        """The number without visual separators (- . ( ))."""
        return self.number.translate(_TEL_VISUAL_SEPARATORS)

    @property
    def is_global(self) -> bool:
        """True for a global number (starts with +)."""
        return self.number.startswith("+")

    @property
    def phone_context(self) -> str | None:
        """The phone-context parameter, or None."""
        return self.params.get("phone-context")

    def format(self) -> str:
        """Return the URI as text."""
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.params.items())
        return f"tel:{self.number}{params}"

    def __str__(self) -> str:
        return self.format()


def _unescape(text: str) -> str:
    """Decode %HH escapes (UTF-8; invalid UTF-8 kept as surrogate escapes)."""
    if "%" not in text:
        return text
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise InvalidUri(f"bad %-escape in {text[:60]!r}")
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            raw.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(text[i].encode("utf-8", "surrogateescape"))
            i += 1
    return raw.decode("utf-8", "surrogateescape")


def _escape(text: str, allowed: frozenset[str]) -> str:
    """Escape every character of text outside allowed as %HH of its UTF-8 bytes."""
    if allowed.issuperset(text):
        return text  # the usual case, checked in C rather than per character
    out: list[str] = []
    for ch in text:
        if ch in allowed:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _checked(text: str, allowed: frozenset[str], what: str) -> str:
    """Return text unescaped after checking it uses only allowed characters and escapes."""
    if not allowed.issuperset(text):  # fast check first; look for the culprit only if it fails
        bad = next((ch for ch in text if ch not in allowed and ch != "%"), None)
        if bad is not None:
            raise InvalidUri(f"character {bad!r} not allowed in {what}")
    return _unescape(text)


def _parse_host(text: str) -> tuple[str, int | None]:
    """Split and validate hostport."""
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise InvalidUri("unterminated IPv6 reference")
        host, rest = text[1:close], text[close + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidUri(f"bad IPv6 address {host[:60]!r}") from None
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if not _HOSTNAME.fullmatch(host):
            raise InvalidUri(f"bad host {host[:60]!r}")
    if not rest:
        return host, None
    port_text = rest[1:]
    if rest[0] != ":" or not _PORT.fullmatch(port_text) or (port := int(port_text)) > 65535:
        raise InvalidUri(f"bad port {rest[:20]!r}")
    return host, port


def _parse_sip(scheme: str, rest: str) -> SipUri:
    """Parse the part of a sip/sips URI after the colon."""
    user = password = None
    at = rest.rfind("@")
    if at != -1:
        userinfo, rest = rest[:at], rest[at + 1:]
        user_text, colon, password_text = userinfo.partition(":")
        if not user_text:
            raise InvalidUri("empty user part before '@'")
        user = _checked(user_text, _USER_CHARS, "the user part")
        if colon:
            password = _checked(password_text, _PASSWORD_CHARS, "the password")
    hostport, question, headers_text = rest.partition("?")
    hostport, semicolon, params_text = hostport.partition(";")
    host, port = _parse_host(hostport)
    params: dict[str, str | None] = {}
    if semicolon:
        for raw in params_text.split(";"):
            name, eq, value = raw.partition("=")
            if not name:
                raise InvalidUri("empty URI parameter")
            key = _checked(name, _PARAM_CHARS, "a URI parameter").lower()
            params.setdefault(key, _checked(value, _PARAM_CHARS, "a URI parameter") if eq else None)
    headers: dict[str, str] = {}
    if question:
        for raw in headers_text.split("&"):
            name, eq, value = raw.partition("=")
            if not name or not eq:
                raise InvalidUri(f"bad URI header {raw[:40]!r}")
            headers[_checked(name, _HEADER_CHARS, "a URI header")] = _checked(
                value, _HEADER_CHARS, "a URI header"
            )
    return SipUri(scheme, host, user, password, port, params, headers)


def _parse_tel(rest: str) -> TelUri:
    """Parse the part of a tel URI after the colon."""
    number, semicolon, params_text = rest.partition(";")
    if not _TEL_NUMBER.fullmatch(number) or not re.search(r"[0-9A-Fa-f*#]", number):
        raise InvalidUri(f"bad telephone number {number[:40]!r}")
    params: dict[str, str | None] = {}
    if semicolon:
        for raw in params_text.split(";"):
            name, eq, value = raw.partition("=")
            if not name or not _TEL_PARAM_CHARS.issuperset(name + value):
                raise InvalidUri(f"bad tel URI parameter {raw[:40]!r}")
            params.setdefault(name.lower(), value if eq else None)
    return TelUri(number, params)


def parse_uri(text: str) -> SipUri | TelUri:
    """Parse a sip:, sips: or tel: URI; other schemes raise UnsupportedUriScheme."""
    match = _SCHEME.match(text)
    if match is None:
        raise InvalidUri(f"no URI scheme in {text[:60]!r}")
    if _URI_DELIMITER.search(text):
        raise InvalidUri(f"whitespace or delimiter inside URI {text[:60]!r}")
    scheme = match.group(1).lower()
    rest = text[match.end():]
    if scheme in ("sip", "sips"):
        return _parse_sip(scheme, rest)
    if scheme == "tel":
        return _parse_tel(rest)
    raise UnsupportedUriScheme(scheme)


def user_part(uri_text: str) -> str | None:
    """Return the user of a sip/sips URI or the number of a tel URI (text may be in <>), or None."""
    text = uri_text.strip(" \t")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip(" \t")
    try:
        uri = parse_uri(text)
    except (InvalidUri, UnsupportedUriScheme):
        return None
    if isinstance(uri, TelUri):
        return uri.digits
    return uri.user or None
