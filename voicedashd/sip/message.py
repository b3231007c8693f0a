"""SIP message model: requests, responses and their headers (RFC 3261 §7); no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

# RFC 3261 §7.3.3 compact forms, plus the common extensions' compact forms.
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
}

_CANONICAL: dict[str, str] = {
    name.lower(): name
    for name in (
        "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Content-Length",
        "Content-Type", "Content-Encoding", "Route", "Record-Route", "Allow", "Accept",
        "Supported", "Require", "Proxy-Require", "Unsupported", "User-Agent", "Server",
        "Diversion", "History-Info", "Retry-After", "Warning", "Expires", "Subject", "Event",
        "Allow-Events", "Session-Expires", "Min-SE", "Accept-Encoding", "Accept-Language",
        "P-Asserted-Identity", "Remote-Party-ID", "Reason", "Date", "Timestamp", "Organization",
        "Priority", "Refer-To", "Referred-By", "Accept-Contact", "Reject-Contact",
        "Request-Disposition", "WWW-Authenticate", "Authorization", "Proxy-Authenticate",
        "Proxy-Authorization", "Call-Info", "Alert-Info", "Error-Info", "In-Reply-To",
        "MIME-Version", "Reply-To", "Content-Disposition", "Content-Language",
    )
}


def _canonicalise(name: str) -> str:
    """Compute the canonical spelling of a header name (the slow path of canonical_name)."""
    lowered = name.strip().lower()
    if lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    if lowered in _CANONICAL:
        return _CANONICAL[lowered]
    return "-".join(part[:1].upper() + part[1:] for part in lowered.split("-"))


# Headers.get/get_all canonicalise their argument on every call, dozens of times per message:
# the spellings that peers and our own code use are answered by one dict look-up.
_SPELLINGS: dict[str, str] = {
    spelling: _canonicalise(spelling)
    for known in (*_CANONICAL.values(), *COMPACT_FORMS)
    for spelling in (known, known.lower(), known.upper())
}


_CACHED_NAME_LENGTH = 64


@lru_cache(maxsize=1024)
def _canonicalise_cached(name: str) -> str:
    """Canonicalise a name outside _SPELLINGS; bounded, as names come from the network."""
    return _canonicalise(name)


def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name, expanding compact forms."""
    known = _SPELLINGS.get(name)
    if known is not None:
        return known
    # Only short names are cached, so a flood of long random names cannot pin much memory.
    if len(name) <= _CACHED_NAME_LENGTH:
        return _canonicalise_cached(name)
    return _canonicalise(name)


@dataclass
class Headers:
    """Ordered, case-insensitive multi-map of header fields; one entry per field value line."""

    items: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Build headers from (name, value) pairs, canonicalising names."""
        return cls([(canonical_name(n), v) for n, v in pairs])

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of a header, or default."""
        key = canonical_name(name)
        for n, v in self.items:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Return every value line of a header, in order."""
        key = canonical_name(name)
        return [v for n, v in self.items if n == key]

    def add(self, name: str, value: str) -> None:
        """Append a header value line."""
        self.items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace all values of a header with one value, keeping its first position."""
        key = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self.items:
            if n == key:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((key, value))
        self.items = out

    def remove(self, name: str) -> None:
        """Drop every value of a header."""
        key = canonical_name(name)
        self.items = [(n, v) for n, v in self.items if n != key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def copy(self) -> Headers:
        """Return an independent copy."""
        return Headers(list(self.items))


@dataclass
class Request:
    """A SIP request: method, Request-URI (as text), headers and body."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"


@dataclass
class Response:
    """A SIP response: status code, reason phrase, headers and body."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"


Message = Request | Response
