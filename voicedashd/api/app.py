"""Build the Quart-Trio app and serve it on hypercorn's trio worker."""

from __future__ import annotations

import socket
import ssl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from pydantic import ValidationError
from quart_schema import QuartSchema, RequestSchemaValidationError
from quart_trio import QuartTrio
from werkzeug.exceptions import BadRequest

from .. import __version__
from ..config import HostPort
from ..errors import ListenerError
from . import auth_routes, health
from .deps import EXTENSION_KEY, ApiDeps
from .security import security_schemes


def create_app(api_deps: ApiDeps) -> QuartTrio:
    """Create the HTTP app wired to the daemon's objects."""
    app = QuartTrio(__name__, static_folder=None)
    app.extensions[EXTENSION_KEY] = api_deps
    QuartSchema(app, info={"title": "voicedashd", "version": __version__},
                security_schemes=security_schemes(), redoc_ui_path=None, scalar_ui_path=None)
    app.register_error_handler(BadRequest, _bad_request)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(auth_routes.blueprint)
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


def _bind(listen: HostPort) -> int:
    """Bind and listen ourselves so a busy port is reported with the setting's name."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"api.listen: cannot listen on {listen}: {exc.strerror}") from None
    return sock.detach()


def _hypercorn_config(api_deps: ApiDeps) -> HypercornConfig:
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
    hc.bind = [f"fd://{_bind(api.listen)}"]
    return hc


async def serve_api(api_deps: ApiDeps, shutdown: trio.Event, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP API until shutdown is set."""
    app = create_app(api_deps)
    hc = _hypercorn_config(api_deps)
    await serve(app, hc, shutdown_trigger=shutdown.wait, task_status=task_status)
