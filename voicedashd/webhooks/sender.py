"""The webhook sender: one task that posts due deliveries from the store, a few at a time."""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import httpx
import structlog
import trio

from .. import __version__
from ..config import WebhookConfig
from ..metrics import Metrics
from ..store import Store
from . import queue
from .policy import RetryPolicy
from .queue import Delivery, WebhookOutbox
from .schedule import select_due
from .signing import signature

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT = 8               # posts at once, to all receivers
MAX_IN_FLIGHT_PER_URL = 4       # so one slow receiver leaves room for the others
ATTEMPT_TIMEOUT = 10.0          # one try, connect to answer
READ_AHEAD = 64                 # pending rows looked at per round, beyond those in flight
FINISHED_KEPT = 7 * 86400.0     # delivered and failed rows are deleted after a week
PRUNE_EVERY = 3600.0
USER_AGENT = f"voicedashd/{__version__}"


class Reason(enum.StrEnum):
    """Why a try failed."""

    STATUS = "status"
    TIMEOUT = "timeout"
    CONNECTION = "connection"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one try came to: a status code, or why there was none."""

    status: int | None = None
    reason: Reason | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        """Whether the receiver accepted the delivery."""
        return self.status is not None and 200 <= self.status < 300


def shown_url(url: str) -> str:
    """A receiver's URL for logs: without its query, which may carry a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def headers(delivery: Delivery, secret: bytes) -> dict[str, str]:
    """The request headers of one try of a delivery."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Voicedashd-Event": delivery.event,
        "X-Voicedashd-Delivery": delivery.delivery_id,
        "X-Voicedashd-Attempt": str(delivery.attempts + 1),
        "X-Voicedashd-Signature": signature(secret, delivery.body),
    }


class WebhookSender:
    """Reads due deliveries from the store and posts each, at most MAX_IN_FLIGHT at once."""

    def __init__(self, store: Store, outbox: WebhookOutbox,
                 webhooks: Callable[[], Sequence[WebhookConfig]], metrics: Metrics,
                 client: httpx.AsyncClient, *, clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random,
                 timeout: float = ATTEMPT_TIMEOUT) -> None:
        self._store = store
        self._outbox = outbox
        self._webhooks = webhooks
        self._metrics = metrics
        self._client = client
        self._clock = clock
        self._jitter = jitter
        self._timeout = timeout
        self._in_flight: dict[str, str] = {}
        self._next_prune = 0.0

    async def run(self, nursery: trio.Nursery) -> NoReturn:
        """Start due deliveries in nursery; sleep until the next is due or the queue changes."""
        while True:
            changed = self._outbox.changed      # taken first: a change while reading wakes us
            now = self._clock()
            if now >= self._next_prune:
                await self._prune(now)
            limit = READ_AHEAD + len(self._in_flight)
            rows, depth = await self._store.run(
                lambda c, n=limit: (queue.pending(c, n), queue.pending_count(c)))
            self._metrics.webhook_queue_depth.set(depth)
            chosen = select_due(rows, now, self._in_flight, limit=MAX_IN_FLIGHT,
                                per_url=MAX_IN_FLIGHT_PER_URL)
            if chosen.start:
                for delivery in await self._store.run(
                        lambda c, ids=chosen.start: queue.load(c, ids)):
                    self._in_flight[delivery.delivery_id] = delivery.url
                    nursery.start_soon(self._deliver, delivery)
            wait = math.inf if chosen.wake_at is None else max(0.0, chosen.wake_at - now)
            with trio.move_on_after(wait):
                await changed.wait()

    async def _prune(self, now: float) -> None:
        removed = await self._store.run(lambda c: queue.prune(c, now - FINISHED_KEPT))
        if removed:
            log.info("webhook_deliveries_pruned", count=removed)
        self._next_prune = now + PRUNE_EVERY

    def _hook(self, url: str) -> WebhookConfig | None:
        return next((hook for hook in self._webhooks() if hook.url == url), None)

    async def _deliver(self, delivery: Delivery) -> None:
        """Try a delivery once and record how it went; the record survives cancellation."""
        try:
            hook = self._hook(delivery.url)
            outcome = await self._post(delivery, hook) if hook is not None else None
            with trio.CancelScope(shield=True):
                await self._record(delivery, hook, outcome)
        finally:
            del self._in_flight[delivery.delivery_id]
            self._outbox.notify()

    async def _post(self, delivery: Delivery, hook: WebhookConfig) -> Outcome:
        if delivery.attempts:
            self._metrics.webhook_retries.inc()
        try:
            with trio.fail_after(self._timeout):
                # The answer's body is not read: only its status counts.
                async with self._client.stream("POST", delivery.url, content=delivery.body,
                                               headers=headers(delivery, hook.secret)) as answer:
                    return Outcome(status=answer.status_code)
        except (trio.TooSlowError, httpx.TimeoutException):
            return Outcome(reason=Reason.TIMEOUT, error=f"no answer within {self._timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            return Outcome(reason=Reason.CONNECTION, error=str(exc) or type(exc).__name__)

    async def _record(self, delivery: Delivery, hook: WebhookConfig | None,
                      outcome: Outcome | None) -> None:
        attempts, now = delivery.attempts + 1, self._clock()
        fields = {"delivery_id": delivery.delivery_id, "webhook_event": delivery.event,
                  "url": shown_url(delivery.url)}
        if hook is None or outcome is None:
            await self._store.run(lambda c: queue.mark_failed(
                c, delivery.delivery_id, delivery.attempts, now, "webhook removed from config"))
            self._metrics.webhook_deliveries.labels(outcome="removed").inc()
            log.warning("webhook_delivery_dropped", reason="webhook_removed", **fields)
            return
        if outcome.delivered:
            await self._store.run(lambda c: queue.mark_delivered(
                c, delivery.delivery_id, attempts, now))
            self._metrics.webhook_deliveries.labels(outcome="delivered").inc()
            log.info("webhook_delivered", status=outcome.status, attempt=attempts, **fields)
            return
        reason = outcome.reason or Reason.STATUS
        error = outcome.error or f"answered {outcome.status}"
        self._metrics.webhook_attempt_failures.labels(reason=reason.value).inc()
        policy = RetryPolicy(base=hook.retry_base)
        at = policy.next_attempt(delivery.created_at, attempts, now, self._jitter())
        if at is None:
            await self._store.run(lambda c: queue.mark_failed(
                c, delivery.delivery_id, attempts, now, error))
            self._metrics.webhook_deliveries.labels(outcome="failed").inc()
            log.warning("webhook_delivery_failed", attempt=attempts, reason=reason.value,
                        error=error, **fields)
            return
        await self._store.run(lambda c: queue.mark_retry(
            c, delivery.delivery_id, attempts, at, error))
        log.info("webhook_attempt_failed", attempt=attempts, reason=reason.value, error=error,
                 status=outcome.status, retry_in=round(at - now, 3), **fields)


async def serve_webhooks(store: Store, outbox: WebhookOutbox,
                         webhooks: Callable[[], Sequence[WebhookConfig]], metrics: Metrics, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Deliver the store's pending webhook deliveries until cancelled."""
    # The client resolves host names with trio's getaddrinfo, in a worker thread.
    async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT, follow_redirects=False,
                                 limits=httpx.Limits(max_connections=MAX_IN_FLIGHT)) as client, \
            trio.open_nursery() as nursery:
        sender = WebhookSender(store, outbox, webhooks, metrics, client)
        task_status.started()
        await sender.run(nursery)
