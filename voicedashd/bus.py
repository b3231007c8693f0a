"""EventBus: numbers call events and fans them out to history, store and subscribers."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from .events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallPhase,
    CallRecorded,
    CallStarted,
    CallSummarized,
    CallSummary,
    utc_now,
)
from .metrics import Metrics
from .store import Store

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=CallEvent)
DEFAULT_HISTORY = 1000
DEFAULT_ENDED_KEPT = 1000


@dataclass
class _CallStream:
    info: CallInfo
    history: deque[CallEvent]
    next_seq: int = 1
    started: CallStarted | None = None      # kept apart: the bounded history may drop them
    ended: CallEnded | None = None
    summarized: CallSummarized | None = None
    recorded: CallRecorded | None = None


Subscriber = Callable[[CallInfo, CallEvent], None]


@dataclass
class EventBus:
    """Fan-out of typed events; publish never blocks and never waits for a subscriber."""

    store: Store
    metrics: Metrics
    history_limit: int = DEFAULT_HISTORY
    _calls: dict[str, _CallStream] = field(default_factory=dict)
    ended_limit: int = DEFAULT_ENDED_KEPT
    _subscribers: list[Subscriber] = field(default_factory=list)
    _ended: deque[str] = field(default_factory=deque)

    def register(self, info: CallInfo) -> None:
        """Make a call known (before any of its events) and persist who it is for."""
        self._calls[info.call_id] = _CallStream(info, deque(maxlen=self.history_limit))
        self.store.submit_call(info)

    def info(self, call_id: str) -> CallInfo | None:
        """Return a known call's data."""
        stream = self._calls.get(call_id)
        return stream.info if stream else None

    def summary(self, call_id: str) -> CallSummary | None:
        """Return a known call's summary as its events so far tell it."""
        stream = self._calls.get(call_id)
        if stream is None:
            return None
        started, ended = stream.started, stream.ended
        phase = CallPhase.ENDED if ended else CallPhase.CONFIRMED if started else CallPhase.RINGING
        return CallSummary(
            info=stream.info, phase=phase,
            answered_at=started.started_at if started else None,
            ended_at=ended.ts if ended else None,
            end_reason=ended.reason.value if ended else None,
            duration=ended.duration if ended else None,
            card=stream.summarized.card() if stream.summarized else None,
            recording=stream.recorded.info() if stream.recorded else None)

    def emit(self, event_type: type[E], call_id: str, **fields: Any) -> E:
        """Build the call's next event (seq and timestamp assigned here) and publish it."""
        stream = self._calls[call_id]
        event = event_type(call_id=call_id, seq=stream.next_seq, ts=utc_now(), **fields)
        stream.next_seq += 1
        stream.history.append(event)
        if isinstance(event, CallStarted):
            stream.started = event
        elif isinstance(event, CallEnded):
            stream.ended = event
            self.metrics.calls_ended.labels(event.reason.value).inc()
        elif isinstance(event, CallSummarized):
            stream.summarized = event
        elif isinstance(event, CallRecorded):
            stream.recorded = event
        self.store.submit(event)
        self.metrics.events_published.labels(event.name).inc()
        log.info(event.name, call_id=call_id, seq=event.seq, progress="realtime",
                 **event.data())
        for subscriber in list(self._subscribers):
            subscriber(stream.info, event)
        if isinstance(event, CallEnded):
            self._retire(call_id)
        return event

    def _retire(self, call_id: str) -> None:
        """Keep the history of recently ended calls for resume; the store keeps everything."""
        self._ended.append(call_id)
        while len(self._ended) > self.ended_limit:
            self._calls.pop(self._ended.popleft(), None)

    def history(self, call_id: str, since_seq: int = 0) -> list[CallEvent]:
        """Return the in-memory events of a call after since_seq."""
        stream = self._calls.get(call_id)
        if stream is None:
            return []
        return [e for e in stream.history if e.seq > since_seq]

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call subscriber for every event; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)
