"""Liveness, readiness and Prometheus metrics routes."""

from __future__ import annotations

from quart import Blueprint, Response

from .deps import deps

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
async def healthz() -> tuple[dict[str, str], int]:
    """Liveness: answers while the event loop runs."""
    return {"status": "pass"}, 200


@blueprint.get("/readyz")
async def readyz() -> tuple[dict[str, object], int]:
    """Readiness: 200 only when SIP, API, hub and store are all up."""
    checks = await deps().readiness.report()
    ok = all(v == "pass" for v in checks.values())
    return {"status": "pass" if ok else "fail", "checks": checks}, 200 if ok else 503


@blueprint.get("/metrics")
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(deps().metrics.render(), content_type="text/plain; version=0.0.4")
