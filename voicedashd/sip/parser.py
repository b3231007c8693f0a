"""Sans-IO SIP message parsing, serialization and stream framing (RFC 3261 §7, §18.3)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from voicedashd.sip.fields import (
    InvalidHeader,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
    split_header_values,
    tag_of,
)
from voicedashd.sip.message import Headers, Request, Response, canonical_name
from voicedashd.sip.uri import InvalidUri, SipUri, UnsupportedUriScheme, parse_uri

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REQUIRED_HEADERS",
    "SINGLE_VALUE_HEADERS",
    "SipParseError",
    "StreamFramer",
    "make_response",
    "parse_message",
    "serialize",
    "split_header_values",
]

MAX_MESSAGE_SIZE = 65536
SINGLE_VALUE_HEADERS = (
    "To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Content-Type",
)
REQUIRED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")

_REASONS = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    505: "Version Not Supported",
    513: "Message Too Large",
}
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# The same blank line found from its first LF: a literal first character lets re skip ahead
# fast, where _BLANK_LINE tries a match at every byte (ten times slower on a typical INVITE).
_BLANK_LINE_FROM_LF = re.compile(rb"\n\r?\n")
_LINE_BREAK = re.compile(r"\r?\n")
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_STATUS_LINE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([0-9]{3})(?: (.*))?", re.IGNORECASE | re.DOTALL)
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTENT_LENGTH_NAME = re.compile(rb"(?i)(?:content-length|l)[ \t]*:")
_MAX_CONTENT_LENGTH = 2**31 - 1


class SipParseError(Exception):
    """Bytes that are not an acceptable SIP message; status and reason suit the error response."""

    def __init__(self, status: int, detail: str, request: Request | None = None) -> None:
        safe = detail.encode("ascii", "backslashreplace").decode("ascii")
        safe = safe.replace("\r", "\\r").replace("\n", "\\n")
        self.status = status
        self.detail = safe
        self.reason = f"{_REASONS.get(status, 'Bad Request')} - {safe}"
        self.request = request
        super().__init__(f"{status} {self.reason}")


class _Problems:
    """Collects what is wrong with a message; the first problem found is the one reported."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def add(self, detail: str, status: int = 400) -> None:
        self.items.append((status, detail))

    def first(self) -> tuple[int, str] | None:
        if not self.items:
            return None
        version = next((p for p in self.items if p[0] == 505), None)
        return version or self.items[0]


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split a message into header section and the bytes after the empty line."""
    match = _BLANK_LINE_FROM_LF.search(data, 0, MAX_MESSAGE_SIZE + 4)
    if match is not None:
        start = match.start()
        if start and data[start - 1] == 0x0D:  # the CR before the LF belongs to the blank line
            start -= 1
        return data[:start], data[match.end():]
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(513, f"header section exceeds {MAX_MESSAGE_SIZE} bytes")
    if data.endswith(b"\n"):
        return data.rstrip(b"\r\n"), b""  # lenient: the final empty line is missing
    raise SipParseError(400, "no empty line after the header section")


def _unfold(lines: list[str], problems: _Problems) -> list[str]:
    """Join continuation lines (leading SP/HT) onto the header line before them."""
    fields: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                problems.add("continuation line before the first header")
                continue
            fields[-1] = fields[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            fields.append(line)
    return fields


def _parse_headers(fields: list[str], problems: _Problems, *, clean: bool = False) -> Headers:
    """Turn unfolded header lines into Headers, skipping (and reporting) malformed ones.

    clean says the caller found no NUL and no stray CR in the lines, so they need no search.
    """
    items: list[tuple[str, str]] = []
    for line in fields:
        if not clean:
            if "\x00" in line:
                continue  # already reported
            if "\r" in line:
                problems.add("stray CR in header line")
                continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_token(name):
            problems.add(f"malformed header line {line[:40]!r}")
            continue
        items.append((canonical_name(name), value.strip(" \t")))
    return Headers(items)


def _parse_start_line(line: str, headers: Headers, problems: _Problems) -> Request | Response:
    """Build the message from its start line, or raise if no start line can be recognised."""
    if line[:4].upper() == "SIP/":
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise SipParseError(400, f"malformed Status-Line {line[:60]!r}")
        version, code, reason = match.group(1).upper(), int(match.group(2)), match.group(3)
        if not 100 <= code <= 699:
            raise SipParseError(400, f"status code {code} out of range 100-699")
        if version != "SIP/2.0":
            problems.add(version, 505)
        return Response(code, reason or "", headers, version=version)
    parts = line.split(" ")
    words = [p for p in parts if p] if "" in parts else parts
    if len(words) < 2 or not is_token(words[0]) or not _VERSION.fullmatch(words[-1]):
        raise SipParseError(400, f"malformed Request-Line {line[:60]!r}")
    method, version, uri_parts = words[0], words[-1].upper(), words[1:-1]
    if len(parts) != 3 or len(uri_parts) != 1:
        problems.add("Request-Line is not 'METHOD SP Request-URI SP SIP-Version'")
    if version != "SIP/2.0":
        problems.add(version, 505)
    return Request(method, " ".join(uri_parts), headers, version=version)


def _check_request_uri(uri: str, problems: _Problems) -> None:
    """Report a Request-URI that is not a bare, well-formed absolute URI."""
    if not _URI_SCHEME.match(uri):
        problems.add(f"Request-URI {uri[:60]!r} is not an absolute URI")
        return
    try:
        parsed = parse_uri(uri)
    except UnsupportedUriScheme:
        return  # answered with 416 by validation, not a syntax error
    except InvalidUri as exc:
        problems.add(f"bad Request-URI: {exc}")
        return
    if isinstance(parsed, SipUri) and parsed.headers:
        problems.add("URI headers are not allowed in the Request-URI")


def _check_headers(msg: Request | Response, problems: _Problems) -> int | None:
    """Report missing, duplicated and malformed key headers; return the Content-Length."""
    headers = msg.headers
    # Each header's first value line, built in C (reversed, so the first line wins); when no
    # name repeats, this one dict answers every look-up below without scanning the headers.
    first = dict(reversed(headers.items))
    repeated = len(first) != len(headers.items)
    if repeated:
        for name in SINGLE_VALUE_HEADERS:
            if len(headers.get_all(name)) > 1:
                problems.add(f"duplicate {name} header")
    for name in REQUIRED_HEADERS:
        if name not in first:
            problems.add(f"missing {name} header")
    _check_field(first.get("CSeq"), "CSeq", problems, lambda v: _check_cseq(msg, v))
    _check_field(
        first.get("Max-Forwards"), "Max-Forwards", problems, lambda v: parse_uint(v, maximum=255)
    )
    _check_field(first.get("From"), "From", problems, parse_name_addr)
    _check_field(first.get("To"), "To", problems, parse_name_addr)
    call_id = first.get("Call-ID")
    if call_id is not None and (not call_id or " " in call_id or "\t" in call_id):
        problems.add("Call-ID is empty or contains whitespace")
    for line in _value_lines(headers, first, repeated, "Via"):
        for value in split_header_values(line):
            try:
                parse_via(value)
            except InvalidHeader as exc:
                problems.add(f"malformed Via: {exc}")
    for line in _value_lines(headers, first, repeated, "Contact"):
        for value in split_header_values(line):
            if value != "*":
                try:
                    parse_name_addr(value)
                except InvalidHeader as exc:
                    problems.add(f"malformed Contact: {exc}")
    length = first.get("Content-Length")
    if length is None:
        return None
    try:
        return parse_uint(length, maximum=_MAX_CONTENT_LENGTH)
    except InvalidHeader as exc:
        problems.add(f"bad Content-Length: {exc}")
        return None


def _value_lines(headers: Headers, first: dict[str, str], repeated: bool, name: str) -> list[str]:
    """Return every value line of a header; first holds them all when no header repeats."""
    if repeated:
        return headers.get_all(name)
    value = first.get(name)
    return [] if value is None else [value]


def _check_field(
    value: str | None, name: str, problems: _Problems, check: Callable[[str], object]
) -> None:
    """Run check on the first value of a header, if present, reporting InvalidHeader."""
    if value is None:
        return
    try:
        check(value)
    except InvalidHeader as exc:
        problems.add(f"malformed {name}: {exc}")


def _check_cseq(msg: Request | Response, value: str) -> None:
    """Raise InvalidHeader if CSeq is malformed or does not match the request method."""
    _, method = parse_cseq(value)
    if isinstance(msg, Request) and method != msg.method:
        raise InvalidHeader(f"method {method[:40]!r} does not match request method")


def parse_message(data: bytes, *, datagram: bool = True) -> Request | Response:
    """Parse one SIP message; raise SipParseError (and only that) if it is not acceptable."""
    data = bytes(data).lstrip(b"\r\n")
    if not data:
        raise SipParseError(400, "empty message")
    head, rest = _split_head(data)
    if len(head) > MAX_MESSAGE_SIZE:
        raise SipParseError(513, f"header section exceeds {MAX_MESSAGE_SIZE} bytes")
    problems = _Problems()
    has_nul = b"\x00" in head
    if has_nul:
        problems.add("NUL byte in header section")
    text = head.decode("utf-8", "surrogateescape")
    crlfs = text.count("\r\n")
    # Every CR followed by LF: splitting on line breaks leaves no CR inside a line.
    clean = not has_nul and text.count("\r") == crlfs
    # When every LF follows a CR, str.split gives what the regex split would, only faster.
    lines = text.split("\r\n") if text.count("\n") == crlfs else _LINE_BREAK.split(text)
    # A continuation line starts right after a line break; without one there is nothing to join.
    folded = "\n " in text or "\n\t" in text
    fields = _unfold(lines[1:], problems) if folded else lines[1:]
    headers = _parse_headers(fields, problems, clean=clean)
    if "\x00" in lines[0] or "\r" in lines[0]:
        raise SipParseError(400, "NUL or stray CR in start line")
    msg = _parse_start_line(lines[0], headers, problems)
    if isinstance(msg, Request):
        _check_request_uri(msg.uri, problems)
    length = _check_headers(msg, problems)
    if length is None:
        msg.body = rest if datagram else b""  # RFC 3261 §18.3: a datagram's body is the rest
    elif length > len(rest):
        problems.add(f"Content-Length {length} exceeds the {len(rest)} bytes of body")
    else:
        msg.body = rest[:length]
    if len(head) + len(msg.body) > MAX_MESSAGE_SIZE:
        problems.add(f"message exceeds {MAX_MESSAGE_SIZE} bytes", 413)
    first = problems.first()
    if first is not None:
        raise SipParseError(first[0], first[1], msg if isinstance(msg, Request) else None)
    return msg


def serialize(msg: Request | Response) -> bytes:
    """Encode a message with CRLF line ends and a correct Content-Length."""
    if isinstance(msg, Request):
        start = f"{msg.method} {msg.uri} {msg.version}"
    else:
        start = f"{msg.version} {msg.status} {msg.reason}"
    lines = [start]
    wrote_length = False
    for name, value in msg.headers.items:
        if name == "Content-Length":
            if wrote_length:
                continue
            value = str(len(msg.body))
            wrote_length = True
        lines.append(f"{name}: {value}")
    if not wrote_length:
        lines.append(f"Content-Length: {len(msg.body)}")
    text = "\r\n".join(lines)
    # The joins put exactly one CR and one LF between lines; any more came from inside a line.
    breaks = len(lines) - 1
    if text.count("\r") != breaks or text.count("\n") != breaks:
        raise ValueError("a start line or header contains CR or LF; refusing to serialize")
    text += "\r\n\r\n"
    return text.encode("utf-8", "surrogateescape") + bytes(msg.body)


def _framing_length(head: bytes) -> int:
    """Return the Content-Length of a header section read from a stream (0 if absent)."""
    values: set[str] = set()
    for line in re.split(rb"\r?\n", head)[1:]:
        match = _CONTENT_LENGTH_NAME.match(line)
        if match is not None:
            values.add(line[match.end():].decode("latin-1").strip(" \t"))
    if not values:
        return 0
    if len(values) > 1:
        raise SipParseError(400, "conflicting Content-Length headers on a stream")
    try:
        return parse_uint(values.pop(), maximum=_MAX_CONTENT_LENGTH)
    except InvalidHeader as exc:
        raise SipParseError(400, f"bad Content-Length: {exc}") from None


class StreamFramer:
    """Split a SIP byte stream (TCP) into whole messages by Content-Length; no I/O."""

    def __init__(self, *, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max = max_message_size
        self._scanned = 0
        self._error: SipParseError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the messages they complete, in order."""
        # A framing error is raised at once, or by the next call if complete messages came
        # before it in this chunk; the stream cannot be resynchronised and should be closed.
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[bytes] = []
        try:
            while (message := self._next()) is not None:
                messages.append(message)
        except SipParseError as exc:
            self._error = exc
            self._buffer.clear()
            if not messages:
                raise
        return messages

    def _next(self) -> bytes | None:
        """Cut one complete message from the buffer, or return None if more bytes are needed."""
        buffer = self._buffer
        skip = len(buffer) - len(buffer.lstrip(b"\r\n"))
        if skip:
            del buffer[:skip]
            self._scanned = max(0, self._scanned - skip)
        if not buffer:
            return None
        match = _BLANK_LINE.search(buffer, max(0, self._scanned - 3), self._max + 4)
        if match is None:
            if len(buffer) > self._max:
                raise SipParseError(513, f"header section exceeds {self._max} bytes")
            self._scanned = len(buffer)
            return None
        if match.start() > self._max:
            raise SipParseError(513, f"header section exceeds {self._max} bytes")
        end = match.end() + _framing_length(bytes(buffer[:match.start()]))
        if end > self._max:
            raise SipParseError(413, f"message exceeds {self._max} bytes")
        if len(buffer) < end:
            return None
        message = bytes(buffer[:end])
        del buffer[:end]
        self._scanned = 0
        return message


def make_response(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to request, copying Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6)."""
    out = Headers()
    for value in request.headers.get_all("Via"):
        out.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag and status != 100 and tag_of(value) is None:
            value = f"{value};tag={to_tag}"
        out.add(name, value)
    if status == 100 and "Timestamp" in request.headers:
        out.add("Timestamp", request.headers.get("Timestamp") or "")
    if request.method == "INVITE" and 100 < status < 300:
        for value in request.headers.get_all("Record-Route"):
            out.add("Record-Route", value)  # RFC 3261 §12.1.1: dialog-creating responses
    for name, value in headers:
        out.add(name, value)
    if content_type is not None:
        out.set("Content-Type", content_type)
    return Response(status, reason, out, bytes(body))
