"""Serve SIP: the endpoint's transactions on a bound transport, answered by a core."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import trio

from ..config import SipConfig
from ..metrics import Metrics
from .endpoint import Core, SipClient, SipEndpoint
from .limits import MAX_SOURCES, Decision, SourceLimiter, SourceLimits, Verdict
from .transport import MessageHandler, Peer, Transport

REFUSAL = (403, "Forbidden - too many requests")


class Admission:
    """[sip]'s untrusted-source limits applied to each message before it is parsed."""

    def __init__(self, settings: Callable[[], SipConfig], metrics: Metrics,
                 limiter: SourceLimiter | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._limiter = limiter or SourceLimiter()
        self._trust: dict[str, bool] = {}
        self._trust_of: SipConfig | None = None  # the config _trust was worked out for

    def check(self, host: str, now: float) -> Decision | None:
        """None for a trusted host (never limited), else the limiter's decision."""
        sip = self._settings()
        if self._trusted(host, sip):
            return None
        limits = SourceLimits(sip.untrusted_rate_limit, sip.untrusted_rate_burst,
                              sip.untrusted_max_transactions)
        decision = self._limiter.check(host, now, limits)
        if decision.verdict is not Verdict.ADMIT:
            action = "refused" if decision.verdict is Verdict.REFUSE else "dropped"
            self._metrics.sip_untrusted_limited.labels(decision.reason, action).inc()
        return decision

    def opened(self, key: Hashable, host: str) -> None:
        """Count a transaction an untrusted host opened (the endpoint's TransactionWatch)."""
        if not self._trusted(host, self._settings()):
            self._limiter.opened(key)
            self._metrics.sip_untrusted_transactions.set(self._limiter.transactions)

    def closed(self, key: Hashable) -> None:
        """A transaction ended."""
        self._limiter.closed(key)
        self._metrics.sip_untrusted_transactions.set(self._limiter.transactions)

    def _trusted(self, host: str, sip: SipConfig) -> bool:
        # sip.trusted is a list of networks: remember each host's answer until a reload.
        if sip is not self._trust_of or len(self._trust) >= MAX_SOURCES:
            self._trust, self._trust_of = {}, sip
        trusted = self._trust.get(host)
        if trusted is None:
            trusted = self._trust[host] = sip.is_trusted(host)
        return trusted


def gated(endpoint: SipEndpoint, admission: Admission) -> MessageHandler:
    """The transport's handler: admitted messages to the endpoint, a refusal 403, else nothing."""
    handle, refuse, check = endpoint.handle, endpoint.refuse, admission.check
    current_time = trio.current_time

    def handler(data: bytes, peer: Peer) -> None:
        decision = check(peer.host, current_time())
        if decision is None or decision.verdict is Verdict.ADMIT:
            handle(data, peer)
        elif decision.verdict is Verdict.REFUSE:
            refuse(data, peer, *REFUSAL)

    return handler


async def serve_sip(transport: Transport, core: Core, client: SipClient, metrics: Metrics,
                    settings: Callable[[], SipConfig], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Take SIP messages from transport until cancelled; requests go to core."""
    admission = Admission(settings, metrics)
    async with trio.open_nursery() as nursery:
        endpoint = SipEndpoint(transport, core, nursery, metrics, client, watch=admission)
        await nursery.start(transport.serve, gated(endpoint, admission))
        task_status.started()
