"""Parsers and formatters for structured SIP header values (RFC 3261 §20, §25); no I/O."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from voicedashd.sip.message import Headers

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = re.compile(rf"[{TOKEN_CHARS}]+")
_DIGITS = re.compile(r"[0-9]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_LWS = " \t"
# A parameter value that is not a quoted string: no whitespace or delimiters.
_PARAM_VALUE_CHARS = r"[^\s\"<>,;=\\\x00-\x1f\x7f]"
_PARAM_VALUE = re.compile(rf"{_PARAM_VALUE_CHARS}+")
# A whole 'name' or 'name=value' parameter with an unquoted value, LWS around its parts: what
# parse_params accepts for it, checked by one match instead of a split, strips and two matches.
_PLAIN_PARAM = re.compile(
    rf"[ \t]*([{TOKEN_CHARS}]+)[ \t]*(?:=[ \t]*({_PARAM_VALUE_CHARS}+)[ \t]*)?"
)
# An unquoted display name: one or more words separated by LWS (RFC 3261 §25.1, a bit lenient).
_DISPLAY_WORDS = re.compile(r"[^\s\"<>,;\\\x00-\x1f\x7f]+(?:[ \t]+[^\s\"<>,;\\\x00-\x1f\x7f]+)*")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_.])?)")
_MAX_INT_DIGITS = 12
_CSEQ_GAP = re.compile(r"[ \t]+")
_CSEQ = re.compile(rf"([0-9]+)[ \t]+([{TOKEN_CHARS}]+)")
# Characters a name-addr's URI may not contain, inside <> and as a bare addr-spec.
_URI_BAD_BRACKETED = re.compile(r"[ \t<>\"]")
_URI_BAD_BARE = re.compile(r"[ \t<>\",?]")

# RFC 3261 §8.1.1.7: a branch starting with this says it was made unique the RFC 3261 way.
MAGIC_COOKIE = "z9hG4bK"
# A tag read from a From/To value that does not parse (a stateless reply still needs it).
_LOOSE_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s]+)", re.IGNORECASE)

MULTI_VALUE_HEADERS = frozenset(
    {"Via", "Contact", "Route", "Record-Route", "Diversion", "History-Info"}
)


class InvalidHeader(ValueError):
    """A header field value does not follow its grammar."""


def parse_uint(text: str, *, maximum: int) -> int:
    """Parse ASCII decimal digits (leading zeros allowed) into an int no larger than maximum."""
    text = text.strip(_LWS)
    if not (text.isascii() and text.isdigit()):  # i.e. [0-9]+: the only ASCII digits are 0-9
        raise InvalidHeader(f"{text[:40]!r} is not a decimal number")
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_INT_DIGITS or (number := int(digits)) > maximum:
        raise InvalidHeader(f"{text[:40]!r} is larger than {maximum}")
    return number


def new_tag() -> str:
    """Return a fresh random tag value with 64 bits of randomness."""
    return secrets.token_hex(8)


def new_branch() -> str:
    """Return a fresh RFC 3261 branch: the magic cookie and 64 bits of randomness."""
    return MAGIC_COOKIE + secrets.token_hex(8)


def is_token(text: str) -> bool:
    """Return True if text is a non-empty RFC 3261 token."""
    return TOKEN.fullmatch(text) is not None


def _quoted_end(text: str, start: int) -> int:
    """Return the index just past the quoted string that opens at text[start]."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i + 1
        i += 1
    raise InvalidHeader("unterminated quoted string")


def unquote(quoted: str) -> str:
    """Return the content of a quoted string (with its quotes), quoted-pairs expanded."""
    inner = quoted[1:-1]
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def quote(text: str) -> str:
    """Return text as a quoted string, escaping backslashes and quotes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_header_values(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <>; empty elements are dropped."""
    if "," not in value:  # the usual case: one element, no need to scan for quotes
        value = value.strip(_LWS)
        return [value] if value else []
    parts: list[str] = []
    start = 0
    i = 0
    in_angle = False
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == '"' and not in_angle:
            end = value.find('"', i + 1)
            while end != -1 and _escaped(value, end):
                end = value.find('"', end + 1)
            i = n if end == -1 else end + 1
            continue
        if ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [p.strip(_LWS) for p in parts if p.strip(_LWS)]


def _escaped(text: str, index: int) -> bool:
    """Return True if text[index] is preceded by an odd number of backslashes."""
    count = 0
    j = index - 1
    while j >= 0 and text[j] == "\\":
        count += 1
        j -= 1
    return count % 2 == 1


def header_values(headers: Headers, name: str) -> list[str]:
    """Return every comma-separated element of every line of a header, in order."""
    out: list[str] = []
    for line in headers.get_all(name):
        out.extend(split_header_values(line))
    return out


def _split_semicolons(text: str) -> list[str]:
    """Split text on semicolons outside quoted strings."""
    if '"' not in text:  # the usual case: no quoted string can hide a semicolon
        return text.split(";")
    parts: list[str] = []
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i = _quoted_end(text, i)
            continue
        if ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ';name=value;flag' header parameters; names are lower-cased, values kept as sent."""
    text = text.strip(_LWS)
    params: dict[str, str | None] = {}
    if not text:
        return params
    if not text.startswith(";"):
        raise InvalidHeader(f"expected ';' before parameters, got {text[:40]!r}")
    for raw in _split_semicolons(text[1:]):
        plain = _PLAIN_PARAM.fullmatch(raw)
        if plain is not None:
            params.setdefault(plain[1].lower(), plain[2])
            continue
        name, eq, value = raw.partition("=")
        name = name.strip(_LWS)
        if not is_token(name):
            raise InvalidHeader(f"bad parameter name {name[:40]!r}")
        if not eq:
            params.setdefault(name.lower(), None)
            continue
        value = value.strip(_LWS)
        if value.startswith('"'):
            if _quoted_end(value, 0) != len(value):
                raise InvalidHeader(f"bad quoted value of parameter {name!r}")
        elif not _PARAM_VALUE.fullmatch(value):
            raise InvalidHeader(f"bad value of parameter {name!r}: {value[:40]!r}")
        params.setdefault(name.lower(), value)
    return params


def format_params(params: dict[str, str | None]) -> str:
    """Format parameters as ';name=value;flag'."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(slots=True)
class Via:
    """One Via element: sent-protocol, sent-by and parameters (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The branch parameter, or None."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter, or None."""
        return self.params.get("received")

    @property
    def rport_requested(self) -> bool:
        """True if the rport parameter is present, with or without a value (RFC 3581)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The numeric rport value, or None if absent or a bare flag."""
        value = self.params.get("rport")
        if value is None or not _DIGITS.fullmatch(value) or len(value) > 5:
            return None
        return int(value)

    @property
    def sent_by(self) -> str:
        """The sent-by as text: host[:port], IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


_VIA_HEAD = re.compile(
    rf"([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]*/[ \t]*([{TOKEN_CHARS}]+)[ \t]+(.*)",
    re.DOTALL,
)
_SENT_BY = re.compile(r"(\[[^\]]*\]|[^\s:;\[\]]+)(?:[ \t]*:[ \t]*([0-9]+))?[ \t]*")


def parse_via(value: str) -> Via:
    """Parse one Via element (not a comma-separated list) into a Via."""
    match = _VIA_HEAD.fullmatch(value.strip(_LWS))
    if match is None:
        raise InvalidHeader(f"Via is not 'SIP/2.0/<transport> <host>': {value[:60]!r}")
    name, version, transport, rest = match.groups()
    sent_by = _SENT_BY.match(rest)
    if sent_by is None or not _HOST.fullmatch(sent_by.group(1)):
        raise InvalidHeader(f"Via has a bad sent-by: {rest[:60]!r}")
    host = sent_by.group(1)
    if host.startswith("["):
        host = host[1:-1]
    port = None if sent_by.group(2) is None else parse_uint(sent_by.group(2), maximum=65535)
    params = parse_params(rest[sent_by.end():])
    return Via(
        transport=transport.upper(),
        host=host,
        port=port,
        params=params,
        protocol=f"{name.upper()}/{version}",
    )


def format_via(via: Via) -> str:
    """Format a Via element back to header text."""
    return f"{via.protocol}/{via.transport} {via.sent_by}{format_params(via.params)}"


def parse_cseq(value: str) -> tuple[int, str]:
    """Parse a CSeq value into (sequence number, method)."""
    text = value.strip(_LWS)
    simple = _CSEQ.fullmatch(text)
    if simple is not None:  # the usual '<digits> <token>': checked by one match
        return parse_uint(simple[1], maximum=2**31 - 1), simple[2]
    parts = _CSEQ_GAP.split(text)
    if len(parts) != 2:
        raise InvalidHeader(f"CSeq is not '<number> <method>': {value[:60]!r}")
    number = parse_uint(parts[0], maximum=2**31 - 1)
    if not is_token(parts[1]):
        raise InvalidHeader(f"CSeq method is not a token: {parts[1][:40]!r}")
    return number, parts[1]


def top_via(headers: Headers) -> Via:
    """Parse the first element of the first Via line of a message."""
    first = headers.get("Via")
    if first is None:
        raise InvalidHeader("no Via header")
    values = split_header_values(first)
    if not values:
        raise InvalidHeader("empty Via header")
    return parse_via(values[0])


def cseq_of(headers: Headers) -> tuple[int, str]:
    """Return the (sequence number, method) of a message's CSeq header."""
    value = headers.get("CSeq")
    if value is None:
        raise InvalidHeader("no CSeq header")
    try:
        return parse_cseq(value)
    except InvalidHeader as exc:
        raise InvalidHeader(f"bad CSeq: {exc}") from exc


@dataclass(slots=True)
class NameAddr:
    """A name-addr or addr-spec header value with its header parameters (From, To, Contact, …)."""

    display_name: str | None
    uri: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The tag parameter, or None."""
        return self.params.get("tag")


def _check_uri_text(uri: str, *, bracketed: bool) -> str:
    """Validate the URI part of a name-addr loosely and return it."""
    if not _SCHEME.match(uri):
        raise InvalidHeader(f"missing URI scheme in {uri[:60]!r}")
    forbidden = _URI_BAD_BRACKETED if bracketed else _URI_BAD_BARE
    if forbidden.search(uri):
        raise InvalidHeader(f"bad character in URI {uri[:60]!r}")
    return uri


def parse_name_addr(value: str) -> NameAddr:
    """Parse a name-addr ('"Name" <uri>;p') or addr-spec ('uri;p') with header parameters."""
    text = value.strip(_LWS)
    if not text:
        raise InvalidHeader("empty address")
    display: str | None
    if text.startswith('"'):
        end = _quoted_end(text, 0)
        display = unquote(text[:end])
        rest = text[end:].lstrip(_LWS)
        if not rest.startswith("<"):
            raise InvalidHeader("display name must be followed by <URI>")
    elif "<" in text:
        index = text.index("<")
        words = text[:index].strip(_LWS)
        if words and not _DISPLAY_WORDS.fullmatch(words):
            raise InvalidHeader(f"display name with special characters must be quoted: {words!r}")
        display = words or None
        rest = text[index:]
    else:
        uri, semicolon, params = text.partition(";")
        uri = _check_uri_text(uri.strip(_LWS), bracketed=False)
        return NameAddr(None, uri, parse_params(semicolon + params))
    close = rest.find(">")
    if close == -1:
        raise InvalidHeader("missing '>' after URI")
    uri = _check_uri_text(rest[1:close].strip(_LWS), bracketed=True)
    return NameAddr(display, uri, parse_params(rest[close + 1:]))


def format_name_addr(addr: NameAddr) -> str:
    """Format a NameAddr as '"Name" <uri>;params' (always bracketed)."""
    display = "" if addr.display_name is None else quote(addr.display_name) + " "
    return f"{display}<{addr.uri}>{format_params(addr.params)}"


def tag_of(value: str | None) -> str | None:
    """Return the tag of a From/To value, or None; read leniently from a malformed one."""
    if not value:
        return None
    try:
        return parse_name_addr(value).tag
    except InvalidHeader:
        params = value.rsplit(">", 1)[1] if "<" in value and ">" in value else value
        match = _LOOSE_TAG.search(params)
        return match.group(1) if match else None
