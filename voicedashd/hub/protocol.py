"""The hub's wire protocol, sans-IO: handshake checks, request parsing, replies, rate limiting.

Every message is a JSON object in a text frame; docs/protocol.md describes each one. Nothing
here touches a socket or a clock: time is passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..config import Config, normalize_origin

RESOURCE = "/ws"
AUTH_TIMEOUT = 5.0
MAX_CLOSE_REASON = 123          # RFC 6455 §5.5: control payload 125 bytes, minus the code
MAX_ID_LENGTH = 128
MAX_CALL_ID_LENGTH = 128
# Integers on the wire must be exact in JavaScript (Number.MAX_SAFE_INTEGER is 2**53 - 1) and
# fit SQLite's 64-bit integers.
MAX_INTEGER = 2**53 - 1

# Close codes (docs/protocol.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TOO_SLOW = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_PING_TIMEOUT = 4408

# Error codes of failed replies.
BAD_REQUEST = "bad_request"
UNKNOWN_TYPE = "unknown_type"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
INTERNAL_ERROR = "internal_error"

_TOKEN_PARAMS = frozenset({"token", "access_token", "jwt", "auth", "authorization", "bearer"})

RequestId = int | str | None


# -- the handshake -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeRejection:
    """Why an opening handshake is refused: the HTTP status and a one-line body."""

    status: int
    reason: str
    detail: str


def header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """Return the first value of a header (case-insensitive name), decoded as Latin-1."""
    wanted = name.lower().encode()
    for key, value in headers:
        if key.lower() == wanted:
            return value.decode("latin-1").strip()
    return None


def header_values(headers: Iterable[tuple[bytes, bytes]], name: str) -> list[str]:
    """Return every value of a header (case-insensitive name), in order, decoded as Latin-1."""
    wanted = name.lower().encode()
    return [value.decode("latin-1").strip() for key, value in headers if key.lower() == wanted]


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Return the token of an `Authorization: Bearer` header, if there is one."""
    scheme, _, token = (header(headers, "authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def allowed_origins(config: Config) -> frozenset[str]:
    """Origins that may open a connection: [hub] origins, else the API's own origin."""
    if config.hub.origins:
        return frozenset(config.hub.origins)
    listen = config.api.listen
    if listen.host in ("0.0.0.0", "::", ""):
        return frozenset()
    scheme = "https" if config.api.tls_cert is not None else "http"
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    return frozenset({normalize_origin(f"{scheme}://{host}:{listen.port}")})


def check_handshake(target: str, headers: Iterable[tuple[bytes, bytes]],
                    origins: frozenset[str]) -> HandshakeRejection | None:
    """Return why a handshake must be refused (path, token in the URL, Origin), or None.

    A handshake without `Origin` is let through: browsers always send one, so it comes from a
    script or an integration, which cross-site WebSocket hijacking cannot use and which still
    has to authenticate. A present Origin must be one of `origins`.
    """
    parts = urlsplit(target)
    if parts.path != RESOURCE:
        return HandshakeRejection(404, "path", f"no WebSocket at {parts.path!r}; connect to "
                                  f"{RESOURCE}")
    if any(key.lower() in _TOKEN_PARAMS for key, _ in parse_qsl(parts.query,
                                                                 keep_blank_values=True)):
        return HandshakeRejection(400, "token_in_url", "never put a token in the URL; send "
                                  '{"type":"auth","token":...} first or an Authorization header')
    origin = header(headers, "origin")
    if origin is None:
        return None
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        normalized = None
    if normalized is None or normalized not in origins:
        return HandshakeRejection(403, "origin", f"origin {origin!r} is not allowed; add it to "
                                  "[hub] origins")
    return None


# -- client messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """`auth`: the first message, carrying the access token."""

    token: str


@dataclass(frozen=True, slots=True)
class SubscribeCall:
    """`subscribe_call`: follow one call, with the events after since_seq."""

    id: RequestId
    call_id: str
    since_seq: int = 0


@dataclass(frozen=True, slots=True)
class UnsubscribeCall:
    """`unsubscribe_call`: stop following one call."""

    id: RequestId
    call_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    """`ping`: an application-level round trip."""

    id: RequestId


ClientMessage = Auth | SubscribeCall | UnsubscribeCall | Ping


class ProtocolError(Exception):
    """A message that cannot be served; answered with a failed reply, the connection stays."""

    def __init__(self, error: str, detail: str, request_id: RequestId = None) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.request_id = request_id


def parse_message(raw: str | bytes) -> ClientMessage:
    """Parse one client frame into a typed message; raise ProtocolError when it is not one."""
    if isinstance(raw, bytes):
        raise ProtocolError(BAD_REQUEST, "send JSON text frames, not binary ones")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ProtocolError(BAD_REQUEST, "message is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, "message must be a JSON object")
    request_id = _request_id(body)
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_REQUEST, "message needs a string 'type'", request_id)
    if kind == "auth":
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(BAD_REQUEST, "auth needs a non-empty string 'token'")
        return Auth(token)
    if kind not in ("subscribe_call", "unsubscribe_call", "ping"):
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}; expected "
                            "subscribe_call, unsubscribe_call or ping", request_id)
    if "id" not in body:
        raise ProtocolError(BAD_REQUEST, f"{kind} needs an 'id' (string or integer), echoed "
                            "in its reply")
    if kind == "ping":
        return Ping(request_id)
    call_id = body.get("call_id")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_CALL_ID_LENGTH:
        raise ProtocolError(BAD_REQUEST, f"{kind} needs a string 'call_id' of 1-"
                            f"{MAX_CALL_ID_LENGTH} characters", request_id)
    if kind == "unsubscribe_call":
        return UnsubscribeCall(request_id, call_id)
    since = body.get("since_seq")
    if since is None:
        since = 0
    if not wire_integer(since):
        raise ProtocolError(BAD_REQUEST, f"'since_seq' must be an integer from 0 to "
                            f"{MAX_INTEGER}", request_id)
    return SubscribeCall(request_id, call_id, since)


def wire_integer(value: object) -> bool:
    """Whether a JSON value is an integer of the protocol: 0 to 2**53 - 1, not a bool or float."""
    return type(value) is int and 0 <= value <= MAX_INTEGER


def _request_id(body: Mapping[str, Any]) -> RequestId:
    value = body.get("id")
    if isinstance(value, str):
        if len(value) > MAX_ID_LENGTH:
            raise ProtocolError(BAD_REQUEST, f"'id' must be at most {MAX_ID_LENGTH} characters")
    elif value is not None and not wire_integer(value):
        raise ProtocolError(BAD_REQUEST, f"'id' must be a string or an integer from 0 to "
                            f"{MAX_INTEGER}")
    return value


# -- server messages ---------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> str:
    """Serialise a message for a text frame."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def established(extension: str, role: str, tenant: str, expires_at: int,
                max_subscriptions: int) -> dict[str, Any]:
    """The first server message after a successful authentication."""
    return {"type": "connection_established", "extension": extension, "role": role,
            "tenant": tenant, "expires_at": expires_at, "max_subscriptions": max_subscriptions}


def reply_ok(request_id: RequestId, **fields: Any) -> dict[str, Any]:
    """A successful reply to a request."""
    return {"type": "reply", "id": request_id, "success": True, **fields}


def reply_error(request_id: RequestId, error: str, detail: str) -> dict[str, Any]:
    """A failed reply to a request (or to a frame that was not one)."""
    return {"type": "reply", "id": request_id, "success": False, "error": error,
            "detail": detail}


def pong(request_id: RequestId) -> dict[str, Any]:
    """The answer to a ping."""
    return {"type": "pong", "id": request_id}


def closing(code: int, reason: str, last_delivered: Mapping[str, int]) -> dict[str, Any]:
    """Sent just before a server-initiated close: the code, why, and what was delivered."""
    return {"type": "closing", "code": code, "reason": reason,
            "last_delivered": dict(last_delivered)}


def too_slow_reason(last_delivered: Mapping[str, int]) -> str:
    """The 1013 close reason: the last delivered seq per call, when it fits in a close frame."""
    full = "too slow; last delivered: " + encode(dict(last_delivered))
    if len(full.encode()) <= MAX_CLOSE_REASON:
        return full
    return "too slow; last delivered: see the closing message"


def clip_reason(reason: str) -> str:
    """Cut a close reason to what a close frame can carry (whole UTF-8 characters)."""
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON:
        return reason
    return data[:MAX_CLOSE_REASON - 3].decode(errors="ignore") + "..."


# -- rate limiting -----------------------------------------------------------------------


class TokenBucket:
    """Allow `rate` requests per second on average and bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one; return whether the request may proceed."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
