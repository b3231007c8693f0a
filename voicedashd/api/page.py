"""The dashboard page at /: index.html naming the hub, a CSP that allows it, and /assets/*."""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from importlib.resources import files
from urllib.parse import urlsplit

from quart import Blueprint, Response, request
from quart_schema import hide

from ..config import Config
from .deps import deps

INDEX = "index.html"
HUB_PLACEHOLDER = "{{hub_url}}"
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file of the page: its bytes, type and ETag."""

    body: bytes
    content_type: str
    etag: str


def hub_url(config: Config, request_host: str | None) -> str:
    """The hub URL the page connects to: [hub] public_url, else ws:// on [hub] listen.

    When the hub listens on every address, the host is the one the browser used to reach the
    page (its Host header), so the page works from any address the daemon answers on.
    """
    hub = config.hub
    if hub.public_url:
        return hub.public_url
    host = hub.listen.host
    if host in _WILDCARD_HOSTS:
        host = _request_hostname(request_host) or "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{hub.listen.port}/ws"


def _request_hostname(value: str | None) -> str | None:
    """The host part of a Host header, if it is a plain name or address (else None)."""
    if not value:
        return None
    try:
        name = urlsplit(f"//{value}").hostname
    except ValueError:
        return None
    if name is None:
        return None
    name = f"[{name}]" if ":" in name else name
    return name if _HOSTNAME.fullmatch(name) else None


def page_csp(hub: str) -> str:
    """The page's Content-Security-Policy: only its own files, the API, the hub, and
    recordings played from Blobs."""
    parts = urlsplit(hub)
    return ("default-src 'self'; script-src 'self'; style-src 'self'; "
            f"connect-src 'self' {parts.scheme}://{parts.netloc}; img-src 'self' data:; "
            # A call's recording plays from a Blob fetched with the token (never in a URL).
            "media-src 'self' blob:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def load_assets() -> tuple[str, dict[str, Asset]]:
    """Read the page (index.html as text) and its assets from the package's web/ folder."""
    web = files("voicedashd") / "web"
    index = (web / INDEX).read_text(encoding="utf-8")
    if HUB_PLACEHOLDER not in index:
        raise RuntimeError(f"voicedashd/web/{INDEX} lacks the {HUB_PLACEHOLDER} placeholder")
    assets = {}
    for entry in web.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.name == INDEX or suffix not in ASSET_TYPES or not entry.is_file():
            continue
        body = entry.read_bytes()
        assets[entry.name] = Asset(body, ASSET_TYPES[suffix],
                                   '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return index, assets


def create_blueprint() -> Blueprint:
    """The page's routes, with its files read once."""
    index, assets = load_assets()
    blueprint = Blueprint("page", __name__)

    @blueprint.get("/")
    @hide
    async def page() -> Response:
        """The dashboard page, naming the hub in a meta tag and in its CSP."""
        hub = hub_url(deps().live.current, request.headers.get("Host"))
        body = index.replace(HUB_PLACEHOLDER, html.escape(hub, quote=True))
        response = Response(body, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = page_csp(hub)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @blueprint.get("/assets/<name>")
    @hide
    async def asset(name: str) -> Response | tuple[dict[str, str], int]:
        """A static file of the page (revalidated by ETag on each load)."""
        found = assets.get(name)
        if found is None:
            return {"error": "not_found", "detail": "no such file"}, 404
        if found.etag in request.headers.get("If-None-Match", ""):
            response = Response(b"", status=304)
        else:
            response = Response(found.body, content_type=found.content_type)
        response.headers["ETag"] = found.etag
        response.headers["Cache-Control"] = "no-cache"
        return response

    return blueprint
