"""Read each request's body before answering it, with a size limit."""

from __future__ import annotations

from quart import Quart, request

MAX_BODY_BYTES = 64 * 1024


def install_body_reader(app: Quart) -> None:
    """Make app read every request body (up to MAX_BODY_BYTES) before routing."""
    # hypercorn's trio worker with quart-trio never closes nor reuses a keep-alive connection
    # whose response went out before its request body arrived (the close is cancelled with the
    # request's task), so the client's next request on it hangs. Reading the body first keeps
    # the connection reusable; the route then gets the body from the request's cache.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.before_request(_read_body)


async def _read_body() -> None:
    """Read the body of a request that has one; it stays cached for the route."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if request.content_length or chunked:
        await request.get_data()
