"""Security headers on every response, and no caching of anything under /api/."""

from __future__ import annotations

import base64
import hashlib
import re

from quart import Quart, Response, request

STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CDN = "https://cdnjs.cloudflare.com"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def install_security_headers(app: Quart, docs_path: str | None = "/docs") -> None:
    """Add the security headers to every response of app; docs_path gets a CSP Swagger UI needs."""
    async def secure(response: Response) -> Response:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        if "Content-Security-Policy" not in headers:  # a page route may set its own
            if docs_path is not None and request.path == docs_path:
                headers["Content-Security-Policy"] = await _docs_csp(response)
            else:
                headers["Content-Security-Policy"] = STRICT_CSP
        if request.path.startswith("/api/") or request.path == "/api":
            headers["Cache-Control"] = "no-store"
        return response

    app.after_request(secure)


async def _docs_csp(response: Response) -> str:
    """Swagger UI: its CDN script and styles, its one inline script by hash, the schema via XHR."""
    body = await response.get_data(as_text=True)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(body))
    return (f"default-src 'none'; script-src {DOCS_CDN} {hashes}; "
            f"style-src {DOCS_CDN} 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'")
