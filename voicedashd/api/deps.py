"""What the API's routes need from the daemon, reachable from the current app."""

from __future__ import annotations

from dataclasses import dataclass

from quart import current_app

from ..auth import Authenticator
from ..bus import EventBus
from ..calls import CallManager
from ..livecfg import LiveConfig
from ..metrics import Metrics
from ..readiness import Readiness
from ..store import Store

EXTENSION_KEY = "voicedashd"


@dataclass(frozen=True, slots=True)
class ApiDeps:
    """The daemon objects the API reads and writes."""

    live: LiveConfig
    store: Store
    metrics: Metrics
    readiness: Readiness
    auth: Authenticator
    bus: EventBus
    calls: CallManager


def deps() -> ApiDeps:
    """Return the daemon objects of the app serving the current request."""
    return current_app.extensions[EXTENSION_KEY]
