"""Who may see which call: the one authorization rule, used by the REST API and the hub."""

from __future__ import annotations

from typing import Protocol

from .events import CallInfo


class Viewer(Protocol):
    """An authenticated dashboard user, as far as call visibility is concerned."""

    extension: str
    tenant: str
    role: str


def may_see(viewer: Viewer, call: CallInfo) -> bool:
    """A user sees calls to their own extension in their tenant; admins see all of their tenant."""
    if viewer.tenant != call.tenant:
        return False
    return viewer.role == "admin" or call.callee_extension == viewer.extension


def visible_extension(viewer: Viewer) -> str | None:
    """The one callee extension may_see limits viewer to in their tenant; None for all of it."""
    return None if viewer.role == "admin" else viewer.extension
