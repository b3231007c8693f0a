"""Dashboard login, token refresh, logout and the current user: /api/auth/*."""

from __future__ import annotations

from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response, request
from quart_schema import (
    RequestSchemaValidationError,
    document_request,
    document_response,
    tag_blueprint,
    validate_request,
    validate_response,
)

from ..auth import InvalidCredentials, InvalidToken, LoginThrottled, RefreshTokenReused, TokenPair
from .client import client_fields
from .deps import deps
from .security import AuthUser, requires_user

log = structlog.get_logger(__name__)

blueprint = Blueprint("auth", __name__, url_prefix="/api/auth")
tag_blueprint(blueprint, ["auth"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoginRequest(_Body):
    """Credentials of a [[users]] entry; tenant may be left out if the extension is unique."""

    extension: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    tenant: str | None = Field(default=None, min_length=1, max_length=128)


class RefreshRequest(_Body):
    """A refresh token from a login or an earlier refresh."""

    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutRequest(_Body):
    """Optionally, the session's refresh token (revoked together with the access token's)."""

    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)


class UserInfo(BaseModel):
    """Who is logged in."""

    extension: str
    role: Literal["user", "admin"]
    tenant: str


class TokenResponse(BaseModel):
    """A new access token (JWT, short-lived) and refresh token (opaque, single use)."""

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user: UserInfo


class ErrorResponse(BaseModel):
    """An error: a stable code and a one-line explanation."""

    error: str
    detail: str | None = None


def _user_info(user: AuthUser) -> UserInfo:
    return UserInfo(extension=user.extension, role=user.role,  # type: ignore[arg-type]
                    tenant=user.tenant)


def _tokens(pair: TokenPair) -> TokenResponse:
    return TokenResponse(access_token=pair.access_token, refresh_token=pair.refresh_token,
                         expires_in=pair.expires_in, user=_user_info(pair.user))


def _invalid_token(detail: str) -> tuple[dict[str, str], int, dict[str, str]]:
    return ({"error": "invalid_token", "detail": detail}, 401,
            {"WWW-Authenticate": 'Bearer realm="voicedashd", error="invalid_token"'})


@blueprint.after_request
async def _no_store(response: Response) -> Response:
    """Tokens and identities must not be cached (RFC 6749 §5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@blueprint.post("/login")
@validate_request(LoginRequest)
@validate_response(TokenResponse, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 429)
async def login(data: LoginRequest) -> object:
    """Log in with extension and password; answers 429 with Retry-After when throttled."""
    who = client_fields()
    try:
        pair = await deps().auth.login(data.extension, data.password, data.tenant,
                                       who["client"])
    except LoginThrottled as exc:
        log.warning("login_throttled", extension=data.extension, tenant=data.tenant,
                    retry_after=exc.retry_after_header, **who)
        return ({"error": "too_many_attempts",
                 "detail": f"too many failed logins; try again in {exc.retry_after_header} s"},
                429, {"Retry-After": exc.retry_after_header})
    except InvalidCredentials as exc:
        log.warning("login_failed", extension=data.extension, tenant=data.tenant,
                    reason=exc.reason, **who)
        return {"error": "invalid_credentials",
                "detail": "unknown extension or wrong password"}, 401
    log.info("login_succeeded", extension=pair.user.extension, tenant=pair.user.tenant,
             role=pair.user.role, family=pair.user.family, **who)
    return _tokens(pair)


@blueprint.post("/refresh")
@validate_request(RefreshRequest)
@validate_response(TokenResponse, 200)
@document_response(ErrorResponse, 401)
async def refresh(data: RefreshRequest) -> object:
    """Exchange a refresh token for a new pair; the presented one stops working."""
    who = client_fields()
    try:
        pair = await deps().auth.refresh(data.refresh_token)
    except RefreshTokenReused as exc:
        log.warning("refresh_token_reuse_detected", extension=exc.extension, tenant=exc.tenant,
                    family=exc.family, **who)
        return _invalid_token(exc.detail)
    except InvalidToken as exc:
        log.info("token_refresh_failed", reason=exc.detail, **who)
        return _invalid_token(exc.detail)
    log.info("token_refreshed", extension=pair.user.extension, tenant=pair.user.tenant,
             family=pair.user.family, **who)
    return _tokens(pair)


@blueprint.post("/logout")
@requires_user
@document_request(LogoutRequest)
@document_response(ErrorResponse, 401)
async def logout(user: AuthUser) -> Response:
    """End the session of the bearer access token (and of the refresh token, if sent)."""
    refresh_token = None
    if (await request.get_data()).strip():
        body = await request.get_json(force=True)
        try:
            refresh_token = LogoutRequest.model_validate(body).refresh_token
        except ValidationError as exc:
            raise RequestSchemaValidationError(exc) from None
    await deps().auth.logout(user, refresh_token)
    log.info("logged_out", extension=user.extension, tenant=user.tenant, family=user.family,
             **client_fields())
    return "", 204


@blueprint.get("/me")
@requires_user
@validate_response(UserInfo, 200)
@document_response(ErrorResponse, 401)
async def me(user: AuthUser) -> UserInfo:
    """The user of the bearer access token."""
    return _user_info(user)
