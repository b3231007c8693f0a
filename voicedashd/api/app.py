"""Build the Quart-Trio app and serve it on hypercorn's trio worker."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from pydantic import ValidationError
from quart_schema import QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    RequestTimeout,
)

from .. import __version__
from ..config import HostPort
from ..errors import ListenerError
from ..listen import numeric_host
from . import auth_routes, calls_routes, health, page
from .body import MAX_BODY_BYTES, install_body_reader
from .cors import install_cors
from .deps import EXTENSION_KEY, ApiDeps
from .headers import install_security_headers
from .security import security_schemes

DOCS_PATH = "/docs"


class _Request(TrioRequest):
    """A request whose body, if not UTF-8, is a bad request (Quart lets it escape as a 500)."""

    async def get_json(self, force: bool = False, silent: bool = False,
                       cache: bool = True) -> Any:
        """Parse the body as JSON; 400 if it is not (even when it is not text)."""
        try:
            return await super().get_json(force, silent, cache)
        except UnicodeDecodeError as error:
            return None if silent else self.on_json_loading_failed(error)


def create_app(api_deps: ApiDeps) -> QuartTrio:
    """Create the HTTP app wired to the daemon's objects."""
    app = QuartTrio(__name__, static_folder=None)
    app.request_class = _Request
    app.extensions[EXTENSION_KEY] = api_deps
    # mode="json": datetimes go out as ISO 8601 (Quart's own encoder would use HTTP dates).
    QuartSchema(app, info={"title": "voicedashd", "version": __version__},
                security_schemes=security_schemes(), swagger_ui_path=DOCS_PATH,
                redoc_ui_path=None, scalar_ui_path=None,
                pydantic_dump_options={"mode": "json"})
    app.register_error_handler(BadRequest, _bad_request)
    app.register_error_handler(NotFound, _not_found)
    app.register_error_handler(MethodNotAllowed, _method_not_allowed)
    app.register_error_handler(RequestEntityTooLarge, _body_not_read)
    app.register_error_handler(RequestTimeout, _body_not_read)
    install_body_reader(app)
    install_cors(app)
    install_security_headers(app, DOCS_PATH)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(auth_routes.blueprint)
    app.register_blueprint(calls_routes.blueprint)
    app.register_blueprint(page.create_blueprint())
    return app


def _describe_invalid_body(error: Exception) -> str:
    if not isinstance(error, ValidationError):
        return str(error)
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] in ("model_type", "dict_type", "model_attributes_type"):
            problems.append("the body must be a JSON object (Content-Type: application/json)")
        elif item["type"] == "missing":
            problems.append(f"{where}: required field is missing")
        elif item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field")
        elif item["type"] == "value_error" and "error" in item.get("ctx", {}):
            problems.append(f"{where}: {item['ctx']['error']}")
        else:
            problems.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
    return "; ".join(problems)


async def _bad_request(error: BadRequest) -> tuple[dict[str, str], int]:
    """Answer 400 in JSON: what was wrong with the request, never echoing its values."""
    if isinstance(error, RequestSchemaValidationError):
        detail = _describe_invalid_body(error.validation_error)
    else:
        detail = "the request could not be read (is the body valid JSON?)"
    return {"error": "bad_request", "detail": detail}, 400


async def _not_found(error: NotFound) -> tuple[dict[str, str], int]:
    """Answer 404 in JSON; the routes are listed in /openapi.json."""
    return {"error": "not_found", "detail": "no such endpoint; see /openapi.json"}, 404


async def _method_not_allowed(error: MethodNotAllowed) -> tuple[dict[str, str], int, dict]:
    """Answer 405 in JSON with the Allow header."""
    allow = ", ".join(error.valid_methods or ())
    return ({"error": "method_not_allowed", "detail": f"this endpoint accepts {allow}"}, 405,
            {"Allow": allow})


async def _body_not_read(error: RequestEntityTooLarge | RequestTimeout
                         ) -> tuple[dict[str, str], int, dict[str, str]]:
    """Answer 413/408 in JSON and close the connection: the rest of its body is never read."""
    if isinstance(error, RequestTimeout):
        body = {"error": "body_timeout", "detail": "the request body did not arrive in time"}
    else:
        body = {"error": "body_too_large",
                "detail": f"request bodies are limited to {MAX_BODY_BYTES // 1024} KiB"}
    return body, error.code or 400, {"Connection": "close"}


def _bind(listen: HostPort, host: str) -> int:
    """Bind host (listen's, resolved) and listen ourselves, so a busy port is reported with
    the setting's name."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, listen.port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"api.listen: cannot listen on {listen}: {exc.strerror}") from None
    return sock.detach()


def _hypercorn_config(api_deps: ApiDeps, host: str) -> HypercornConfig:
    api = api_deps.live.current.api
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = None
    hc.graceful_timeout = 2.0
    hc.include_server_header = False
    if api.tls_cert and api.tls_key:
        hc.certfile, hc.keyfile = str(api.tls_cert), str(api.tls_key)
        try:
            hc.create_ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"api.tls_cert: cannot load TLS files: {exc}") from None
    hc.bind = [f"fd://{_bind(api.listen, host)}"]
    return hc


async def serve_api(api_deps: ApiDeps, shutdown: trio.Event, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP API until shutdown is set."""
    app = create_app(api_deps)
    # A host name is resolved here, off the event loop, never by bind() on it.
    host = await numeric_host(api_deps.live.current.api.listen, "api.listen")
    hc = _hypercorn_config(api_deps, host)
    await serve(app, hc, shutdown_trigger=shutdown.wait, task_status=task_status)
