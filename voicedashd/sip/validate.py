"""Request checks a UAS makes before processing (RFC 3261 §8.2): method, URI, extensions, body."""

from __future__ import annotations

from voicedashd.sip.fields import InvalidHeader, new_tag, parse_uint, split_header_values
from voicedashd.sip.message import Request, Response
from voicedashd.sip.parser import make_response
from voicedashd.sip.uri import InvalidUri, UnsupportedUriScheme, parse_uri

KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)
ALLOWED_METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")
# Taken only inside a dialog that asked for them (NOTIFY: of our REFER); not advertised.
DIALOG_METHODS = frozenset({"NOTIFY"})
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset()
ACCEPTED_CONTENT_TYPE = "application/sdp"


def allow_header() -> tuple[str, str]:
    """Return the Allow header listing the methods we support."""
    return ("Allow", ", ".join(ALLOWED_METHODS))


def _unsupported_extensions(request: Request) -> list[str]:
    """Return the Require option tags we do not support, in order, without duplicates."""
    out: list[str] = []
    for line in request.headers.get_all("Require"):
        for option in split_header_values(line):
            if option.lower() not in SUPPORTED_EXTENSIONS and option not in out:
                out.append(option)
    return out


def _media_type(content_type: str) -> str:
    """Return the lower-cased type/subtype of a Content-Type value."""
    return content_type.split(";", 1)[0].strip(" \t").lower()


def check_request(request: Request, *, to_tag: str | None = None) -> Response | None:
    """Return the error response a request must get before processing, or None if it may go on."""
    # ACK never gets a response, so it always passes; to_tag defaults to a fresh random tag.
    if request.method == "ACK":
        return None
    tag = to_tag or new_tag()

    def reject(status: int, reason: str, *headers: tuple[str, str]) -> Response:
        return make_response(request, status, reason, to_tag=tag, headers=headers)

    if request.method not in KNOWN_METHODS:
        return reject(501, "Not Implemented", allow_header())
    if request.method not in ALLOWED_METHODS and request.method not in DIALOG_METHODS:
        return reject(405, "Method Not Allowed", allow_header())
    try:
        parse_uri(request.uri)
    except UnsupportedUriScheme:
        return reject(416, "Unsupported URI Scheme")
    except InvalidUri as exc:
        return reject(400, f"Bad Request - {exc}")
    max_forwards = request.headers.get("Max-Forwards")
    if max_forwards is not None and request.method != "OPTIONS":
        try:
            hops = parse_uint(max_forwards, maximum=255)
        except InvalidHeader:
            return reject(400, "Bad Request - bad Max-Forwards")
        if hops == 0:
            return reject(483, "Too Many Hops")
    if request.method != "CANCEL":
        unsupported = _unsupported_extensions(request)
        if unsupported:
            return reject(420, "Bad Extension", ("Unsupported", ", ".join(unsupported)))
    if request.method == "INVITE" and request.body:
        content_type = request.headers.get("Content-Type")
        if content_type is None or _media_type(content_type) != ACCEPTED_CONTENT_TYPE:
            return reject(415, "Unsupported Media Type", ("Accept", ACCEPTED_CONTENT_TYPE))
        encoding = (request.headers.get("Content-Encoding") or "identity").strip(" \t").lower()
        if encoding != "identity":
            return reject(415, "Unsupported Media Type", ("Accept-Encoding", "identity"))
    return None
