"""CORS for exactly the origins in `[api] cors_origins`, read per request so reloads apply."""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from quart import Quart, Response, jsonify, request

from .deps import deps

log = structlog.get_logger(__name__)

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE = "600"


def install_cors(app: Quart) -> None:
    """Answer preflights and label responses for the configured origins only."""
    app.before_request(_preflight)
    app.after_request(_allow_origin)


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether an Origin header names one of the allowed origins (scheme://host[:port])."""
    wanted = origin.strip().rstrip("/").lower()
    return any(wanted == item.strip().rstrip("/").lower() for item in allowed)


def _allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    if origin and origin_allowed(origin, deps().live.current.api.cors_origins):
        return origin
    return None


async def _preflight() -> Response | None:
    """Answer a CORS preflight (OPTIONS with Access-Control-Request-Method) before routing."""
    if (request.method != "OPTIONS" or "Origin" not in request.headers
            or "Access-Control-Request-Method" not in request.headers):
        return None
    origin = _allowed_origin()
    if origin is None:
        log.info("cors_preflight_refused", path=request.path)
        response = jsonify({"error": "origin_not_allowed",
                            "detail": "this origin is not listed in api.cors_origins"})
        response.status_code = 403
        return response
    response = Response("", status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response


async def _allow_origin(response: Response) -> Response:
    """Add Access-Control-Allow-Origin for an allowed Origin; nothing for any other."""
    response.vary.add("Origin")
    origin = _allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response
