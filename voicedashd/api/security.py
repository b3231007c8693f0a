"""The one place protected routes get their user: a verified `Authorization: Bearer` JWT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

from quart import Response, abort, g, jsonify, request
from quart_schema import security_scheme

from ..auth import AuthUser, InvalidToken
from .deps import deps

__all__ = ["BEARER", "AuthUser", "bearer_token", "current_user", "invalid_token",
           "requires_user", "security_schemes"]

BEARER = "bearer"
_USER_KEY = "voicedashd_auth_user"
R = TypeVar("R")


def security_schemes() -> dict[str, Any]:
    """The OpenAPI security schemes of the API: a bearer JWT."""
    return {BEARER: {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}}


def invalid_token(detail: str) -> Response:
    """Return the 401 answer for a missing or rejected access token (RFC 6750 §3)."""
    response = jsonify({"error": "invalid_token", "detail": detail})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="voicedashd", error="invalid_token"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _reject(detail: str) -> NoReturn:
    abort(invalid_token(detail))


def bearer_token() -> str | None:
    """Return the token of the request's `Authorization: Bearer` header, if there is one."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def current_user() -> AuthUser:
    """Return the user of the request's access token; abort with 401 when it is not valid."""
    cached = g.get(_USER_KEY)
    if cached is not None:
        return cached
    token = bearer_token()
    if token is None:
        _reject("send an access token as `Authorization: Bearer <token>` "
                "(get one from POST /api/auth/login)")
    try:
        user = await deps().auth.verify_access(token)
    except InvalidToken as exc:
        _reject(exc.detail)
    setattr(g, _USER_KEY, user)
    return user


def requires_user(func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Decorate a route to need a valid access token; the route gets it as `user=`."""
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> R:
        return await func(*args, user=await current_user(), **kwargs)

    return security_scheme([{BEARER: []}])(wrapper)
