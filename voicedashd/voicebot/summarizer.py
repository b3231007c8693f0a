"""Makes each ended AI-handled call's message card and publishes it (`call_summary`).

Offline rules always give a card; with `voicebot.llm.engine = "openai"` the LLM is asked for
one first, and any failure or time-out falls back to the rules' card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import structlog
import trio

from ..bus import EventBus
from ..callstore import (
    TranscriptEntry,
    calls_without_card,
    events_since,
    get_call,
    read_transcript,
    transcript_entry,
)
from ..config import LlmConfig
from ..events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallSummarized,
    MessageCard,
    Speaker,
    utc_now,
)
from ..events import call_summarized_fields as card_fields
from ..livecfg import LiveConfig
from ..store import Store
from .summary import Line, Wording, llm_messages, offline_card, parse_llm_card

log = structlog.get_logger(__name__)

LLM_TIMEOUT = 20.0      # seconds an LLM may take for a card before the rules' card is used
LLM_MIN_TOKENS = 300    # a card's JSON; the spoken answers' max_tokens may be smaller
PENDING_CALLS = 256     # ended calls waiting for their card; beyond this, a card is skipped
AT_ONCE = 4             # cards made at the same time (each may wait on the LLM)
# At start, calls that ended this recently without a card (the process stopped before making
# it, or it was skipped) get one; older ones are left as they are.
CATCH_UP_WINDOW = timedelta(hours=24)
CATCH_UP_LIMIT = 200


async def ask_llm(config: LlmConfig, environ: Mapping[str, str], lines: Sequence[Line],
                  wording: Wording, *, timeout: float = LLM_TIMEOUT) -> MessageCard:
    """The LLM's card for a transcript; raises on any failure, TooSlowError after timeout."""
    import openai  # only with engine "openai"; check-config says when it is missing

    key = environ.get(config.api_key_env, "") if config.api_key_env else ""
    with trio.fail_after(timeout):
        async with openai.AsyncOpenAI(api_key=key or "none", base_url=config.base_url,
                                      max_retries=0, timeout=timeout) as client:
            reply = await client.chat.completions.create(
                model=config.model or "", messages=llm_messages(lines, wording),  # type: ignore
                temperature=0, max_tokens=max(config.max_tokens, LLM_MIN_TOKENS))
    return parse_llm_card(reply.choices[0].message.content if reply.choices else None)


def transcript_lines(entries: Sequence[tuple[str, str, bool]]) -> list[Line]:
    """The final, non-empty lines of a transcript given as (speaker, text, final)."""
    return [Line(Speaker(speaker), text) for speaker, text, final in entries
            if final and text.strip()]


class Summarizer:
    """Takes ended AI-handled calls from the bus and publishes each one's card."""

    def __init__(self, live: LiveConfig, bus: EventBus, store: Store,
                 environ: Mapping[str, str], *, llm_timeout: float = LLM_TIMEOUT) -> None:
        self._live = live
        self._bus = bus
        self._store = store
        self._environ = environ
        self._llm_timeout = llm_timeout
        self._send, self._receive = trio.open_memory_channel[str](PENDING_CALLS)
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()

    def on_event(self, info: CallInfo, event: CallEvent) -> None:
        """The bus callback: queue an ended AI-handled call for its card; never blocks."""
        if not (isinstance(event, CallEnded) and info.is_ai_handled):
            return
        try:
            self._send.send_nowait(info.call_id)
        except trio.WouldBlock:
            log.warning("call_summary_skipped", call_id=info.call_id, reason="queue full")
            return
        self._busy += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    async def run(self) -> None:
        """Make the missing cards of recent calls, then cards until cancelled, AT_ONCE at a
        time."""
        limiter = trio.CapacityLimiter(AT_ONCE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.catch_up, utc_now())
            async for call_id in self._receive:
                await limiter.acquire_on_behalf_of(call_id)
                nursery.start_soon(self._one, call_id, limiter)

    async def drain(self) -> None:
        """Wait until every call queued so far has its card published."""
        await self._idle.wait()

    async def _one(self, call_id: str, limiter: trio.CapacityLimiter) -> None:
        try:
            card = await self.card(call_id)
            if card is not None:
                if self._bus.info(call_id) is None:
                    log.warning("call_summary_skipped", call_id=call_id, reason="call forgotten")
                else:
                    self._bus.emit(CallSummarized, call_id, **card_fields(card))
        except Exception:  # one call's card: a failure here loses that card only
            log.exception("call_summary_failed", call_id=call_id)
        finally:
            limiter.release_on_behalf_of(call_id)
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def catch_up(self, now: datetime) -> int:
        """Store the cards of AI-handled calls that ended since CATCH_UP_WINDOW before now
        without one (a call cut by a crash is closed at start without passing the bus)."""
        made = 0
        for call_id in await calls_without_card(self._store, now - CATCH_UP_WINDOW,
                                                CATCH_UP_LIMIT):
            try:
                made += await self._catch_up_one(call_id, now)
            except Exception:  # one call's card: a failure here loses that card only
                log.exception("call_summary_failed", call_id=call_id)
        if made:
            log.info("call_summaries_caught_up", count=made)
        return made

    async def _catch_up_one(self, call_id: str, now: datetime) -> int:
        if self._bus.info(call_id) is not None:  # this process's call: its card comes live
            return 0
        summary = await get_call(self._store, call_id)
        events = await events_since(self._store, self._bus, call_id)
        if summary is None or not events:
            return 0
        entries = [e for e in map(transcript_entry, events) if e is not None]
        card = await self._card_for(summary.info, entries)
        # Nobody follows a call the bus has forgotten: the card goes to the store (and the
        # webhooks' outbox with it) as the call's next event, for the lists and GET.
        self._store.submit(CallSummarized(call_id=call_id, seq=events[-1].seq + 1, ts=now,
                                          **card_fields(card)))
        return 1

    async def card(self, call_id: str) -> MessageCard | None:
        """A call's card from its transcript: the LLM's if configured and it answers well."""
        info = self._bus.info(call_id)
        if info is None:
            return None
        return await self._card_for(info, await read_transcript(self._store, self._bus, call_id))

    async def _card_for(self, info: CallInfo, entries: Sequence[TranscriptEntry]) -> MessageCard:
        lines = transcript_lines([(e.speaker, e.text, e.final) for e in entries])
        # Imported here: the pipeline module brings Pipecat, whose import prints a banner
        # unless the daemon's logging is set up first (the bridge has loaded it by now).
        from .pipeline import render

        voicebot = self._live.current.voicebot
        chosen = voicebot.for_call(info.tenant, info.callee_extension)
        # A recorded call's notice is scripted too: it comes before the greeting.
        tenant = self._live.current.tenant_named(info.tenant)
        greeting = (f"{tenant.record_notice} {chosen.greeting or ''}"
                    if tenant is not None and tenant.record else chosen.greeting)
        wording = Wording(*(render(text or "", info) for text in
                            (greeting, chosen.fallback, chosen.farewell)))
        # Rules over a long call's transcript are a few milliseconds: kept off the loop anyway.
        card = await trio.to_thread.run_sync(offline_card, lines, wording)
        if voicebot.llm.engine == "none":
            return card
        try:
            return await ask_llm(voicebot.llm, self._environ, lines, wording,
                                 timeout=self._llm_timeout)
        except Exception as exc:  # the LLM's boundary: whatever went wrong, the rules' card
            log.warning("call_summary_llm_failed", call_id=info.call_id,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            return card


async def serve_summaries(live: LiveConfig, bus: EventBus, store: Store,
                          environ: Mapping[str, str], *,
                          task_status: trio.TaskStatus[Summarizer] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Make and publish message cards until cancelled; reports the Summarizer."""
    summarizer = Summarizer(live, bus, store, environ)
    unsubscribe = bus.subscribe(summarizer.on_event)
    try:
        task_status.started(summarizer)
        await summarizer.run()
    finally:
        unsubscribe()
