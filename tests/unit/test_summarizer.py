"""Message cards end to end in one process: bus → Summarizer → call_summary, store, history;
the LLM path against a local HTTP server that answers well, badly, or not at all."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.config_text import MINIMAL
from voicedashd import callstore
from voicedashd.bus import EventBus
from voicedashd.config import parse_config
from voicedashd.events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallStarted,
    CallSummarized,
    EndReason,
    HandledBy,
    MessageCard,
    SttTranscript,
    TtsStarted,
    call_started_fields,
    event_from_record,
    utc_now,
)
from voicedashd.hub.router import Router
from voicedashd.livecfg import LiveConfig
from voicedashd.metrics import Metrics
from voicedashd.store import MIGRATIONS, Store, open_store
from voicedashd.voicebot.summarizer import CATCH_UP_WINDOW, Summarizer, serve_summaries

BASE = MINIMAL
ENV = {"VOICEDASHD_JWT_SECRET": "s" * 48}
ARRIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
MESSAGE = [
    ("caller", "Hi, this is Maria from Contoso. I'm calling about tomorrow's delivery."),
    ("bot", "Sorry, I don't know the answer to that."),
    ("bot", "I'll pass your message on to extension 1001."),
    ("caller", "Could he call me back on five five five, one two three four?"),
]
LLM_CARD = {"caller_name": "Maria Lopez", "callback_number": "+1 555 123 4567",
            "callback_requested": True, "reason": "Maria wants to move tomorrow's delivery",
            "handled_by": "message_taken"}


@dataclass(frozen=True)
class Owner:
    """Extension 1001 of acme, as the access rules see a user."""

    extension: str = "1001"
    tenant: str = "acme"
    role: str = "user"


def live_config(tmp_path: Path, voicebot: str = "",
                environ: dict[str, str] | None = None) -> LiveConfig:
    return LiveConfig(parse_config(BASE + voicebot, path=tmp_path / "voicedashd.toml",
                                   environ=ENV | (environ or {})))


def info(call_id: str, *, ai: bool = True) -> CallInfo:
    return CallInfo(call_id=call_id, tenant="acme", caller="555", caller_name=None,
                    callee="1001", callee_extension="1001", is_ai_handled=ai,
                    created_at=ARRIVED)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store.sqlite3", Metrics()) as opened, \
            trio.open_nursery() as nursery:
        await nursery.start(opened.run_writer)
        yield opened
        nursery.cancel_scope.cancel()


def play_call(bus: EventBus, call: CallInfo, lines: list[tuple[str, str]]) -> None:
    bus.register(call)
    bus.emit(CallStarted, call.call_id, **call_started_fields(call, ARRIVED))
    for speaker, text in lines:
        if speaker == "caller":
            bus.emit(SttTranscript, call.call_id, text=text[:5], is_final=False)
            bus.emit(SttTranscript, call.call_id, text=text, is_final=True)
        else:
            bus.emit(TtsStarted, call.call_id, text=text)
    bus.emit(CallEnded, call.call_id, reason=EndReason.CALLER_HANGUP, duration=9.0)


async def next_card(bus: EventBus) -> CallSummarized:
    """The next call_summary the bus publishes."""
    send, receive = trio.open_memory_channel[CallSummarized](10)

    def take(_: CallInfo, event: CallEvent) -> None:
        if isinstance(event, CallSummarized):
            send.send_nowait(event)
    unsubscribe = bus.subscribe(take)
    try:
        with trio.fail_after(20):
            return await receive.receive()
    finally:
        unsubscribe()


async def test_an_ended_call_gets_its_card_stored_and_listed(tmp_path: Path,
                                                            store: Store) -> None:
    bus = EventBus(store, Metrics())
    async with trio.open_nursery() as nursery:
        summarizer = await nursery.start(serve_summaries, live_config(tmp_path), bus, store, {})
        async with trio.open_nursery() as waiting:
            got: list[CallSummarized] = []

            async def wait() -> None:
                got.append(await next_card(bus))
            waiting.start_soon(wait)
            await trio.sleep(0)
            play_call(bus, info("c1"), MESSAGE)
        [event] = got
        assert event.call_id == "c1"
        assert bus.history("c1")[-2].name == "call_ended"       # the card comes after the end
        card = event.card()
        assert (card.caller_name, card.callback_number, card.callback_requested) == (
            "Maria", "5551234", True)
        assert card.handled_by is HandledBy.MESSAGE_TAKEN and card.source == "rules"
        await summarizer.drain()
        await store.flush()
        stored = await callstore.get_call(store, "c1")
        assert stored is not None and stored.card == card
        assert stored.wire()["summary"] == card.wire()
        page = await callstore.call_history(store, Owner())
        assert [c.card for c in page.calls] == [card]
        # The event itself is stored and read back whole (what a hub backlog replays).
        [read] = [e for e in await callstore.events_since(store, EventBus(store, Metrics()), "c1")
                  if isinstance(e, CallSummarized)]
        assert read == event
        nursery.cancel_scope.cancel()


async def test_the_bus_summary_carries_the_card(tmp_path: Path, store: Store) -> None:
    bus = EventBus(store, Metrics())
    play_call(bus, info("c1"), [])
    assert bus.summary("c1").card is None  # type: ignore[union-attr]
    card = MessageCard(caller_name=None, callback_number=None, callback_requested=False,
                       reason="The caller did not say anything.",
                       handled_by=HandledBy.MESSAGE_TAKEN)
    bus.emit(CallSummarized, "c1", **card.wire())
    assert bus.summary("c1").card == card  # type: ignore[union-attr]


async def test_calls_not_handled_by_the_bot_get_no_card(tmp_path: Path, store: Store) -> None:
    bus = EventBus(store, Metrics())
    summarizer = Summarizer(live_config(tmp_path), bus, store, {})
    bus.subscribe(summarizer.on_event)
    play_call(bus, info("c1", ai=False), MESSAGE)
    with trio.fail_after(1):
        await summarizer.drain()    # nothing was queued
    assert not [e for e in bus.history("c1") if isinstance(e, CallSummarized)]


async def test_calls_a_stopped_process_left_without_a_card_get_one_at_start(
        tmp_path: Path, store: Store) -> None:
    """The previous process (one bus) stored ended calls but made no cards; the next one (a
    new bus) makes the missing card of each recent AI-handled call, once, as the next event."""
    before = EventBus(store, Metrics())
    play_call(before, info("c1"), MESSAGE)
    play_call(before, info("c2", ai=False), MESSAGE)
    play_call(before, info("c3"), MESSAGE)
    before.emit(CallSummarized, "c3", **MessageCard(
        caller_name=None, callback_number=None, callback_requested=False, reason="Made.",
        handled_by=HandledBy.MESSAGE_TAKEN).wire())
    await store.flush()
    last_seq = before.history("c1")[-1].seq
    summarizer = Summarizer(live_config(tmp_path), EventBus(store, Metrics()), store, {})
    # Calls that ended longer ago than the window are left alone.
    assert await summarizer.catch_up(utc_now() + CATCH_UP_WINDOW + timedelta(minutes=1)) == 0
    assert await summarizer.catch_up(utc_now()) == 1
    await store.flush()
    stored = await callstore.get_call(store, "c1")
    assert stored is not None and stored.card is not None
    assert (stored.card.caller_name, stored.card.callback_number) == ("Maria", "5551234")
    events = await callstore.events_since(store, EventBus(store, Metrics()), "c1")
    assert [(e.name, e.seq) for e in events[-2:]] == [("call_ended", last_seq),
                                                       ("call_summary", last_seq + 1)]
    assert (await callstore.get_call(store, "c2")).card is None  # type: ignore[union-attr]
    assert (await callstore.get_call(store, "c3")).card.reason == "Made."  # type: ignore[union-attr]
    assert await summarizer.catch_up(utc_now()) == 0   # once only


def test_the_card_is_printable() -> None:
    card = MessageCard(caller_name="Ma\x1bria\u202e", callback_number=None,
                       callback_requested=False, reason="Hi\nthere\x07",
                       handled_by="message_taken")  # type: ignore[arg-type]
    assert (card.caller_name, card.reason, card.handled_by) == (
        "Maria", "Hi there", HandledBy.MESSAGE_TAKEN)


def test_the_store_schema_keeps_cards_on_calls(tmp_path: Path) -> None:
    async def opened() -> None:
        async with open_store(tmp_path / "s.sqlite3", Metrics()) as s:
            version = await s.run(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
            columns = await s.run(lambda c: [r[1] for r in
                                             c.execute("PRAGMA table_info(calls)").fetchall()])
            assert version == len(MIGRATIONS) >= 3
            assert "summary" in columns
    trio.run(opened)


def test_a_stored_event_from_before_is_still_read(tmp_path: Path) -> None:
    data = {"caller_name": None, "callback_number": "5551234", "callback_requested": True,
            "reason": "Call back.", "handled_by": "message_taken", "source": "rules"}
    event = event_from_record("c1", 7, "call_summary", ARRIVED.isoformat(), data)
    assert isinstance(event, CallSummarized) and event.handled_by is HandledBy.MESSAGE_TAKEN
    assert event.to_wire()["data"] == data


def test_the_lobby_gets_the_card() -> None:
    @dataclass(eq=False)
    class Box:
        got: list[str] = field(default_factory=list)

        def deliver(self, _: CallInfo, event: CallEvent) -> None:
            self.got.append(event.name)

    router, owner, other = Router(), Box(), Box()
    router.join(owner, "acme", "1001", admin=False)
    router.join(other, "acme", "1002", admin=False)
    card = CallSummarized(call_id="c1", seq=9, ts=ARRIVED, caller_name=None,
                          callback_number=None, callback_requested=False, reason="x.",
                          handled_by=HandledBy.MESSAGE_TAKEN)
    router.publish(info("c1"), card)
    assert (owner.got, other.got) == (["call_summary"], [])


# -- the LLM path ----------------------------------------------------------------------------

Reply = Callable[[dict[str, Any]], Awaitable[bytes]]


def completion(content: str) -> bytes:
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]})
    return http_response(200, body.encode(), "application/json")


def http_response(status: int, body: bytes, kind: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


@dataclass
class LlmServer:
    """A chat-completions endpoint on 127.0.0.1 that answers as reply says; keeps requests."""

    reply: Reply
    requests: list[dict[str, Any]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        self.heads.append(head)
        self.requests.append(json.loads(body))
        await stream.send_all(await self.reply(self.requests[-1]))
        await stream.aclose()


async def card_via_llm(tmp_path: Path, store: Store, reply: Reply, *,
                       timeout: float = 10) -> tuple[MessageCard | None, LlmServer]:
    server = LlmServer(reply)
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, server.handle, 0,
                                                     host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        live = live_config(tmp_path, f"""
[voicebot.llm]
engine = "openai"
model = "card-model"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "CARD_KEY"
""", {"CARD_KEY": "k"})
        bus = EventBus(store, Metrics())
        play_call(bus, info("c1"), MESSAGE)
        summarizer = Summarizer(live, bus, store, {"CARD_KEY": "k"}, llm_timeout=timeout)
        with trio.fail_after(timeout + 20):
            card = await summarizer.card("c1")
        nursery.cancel_scope.cancel()
    return card, server


async def test_llm_card_is_used_when_valid(tmp_path: Path, store: Store) -> None:
    async def valid(_: dict[str, Any]) -> bytes:
        return completion(json.dumps(LLM_CARD))
    card, server = await card_via_llm(tmp_path, store, valid)
    assert card is not None and card.source == "llm"
    assert (card.caller_name, card.callback_number, card.reason) == (
        "Maria Lopez", "+15551234567", "Maria wants to move tomorrow's delivery.")
    [request] = server.requests
    assert request["model"] == "card-model" and request["temperature"] == 0
    assert b"authorization: bearer k\r\n" in server.heads[0].lower() + b"\r\n"
    prompt = request["messages"][-1]["content"]
    assert "Caller: Could he call me back on five five five" in prompt
    assert "Assistant [scripted]: Sorry, I don't know the answer to that." in prompt


@pytest.mark.parametrize("answer", ids=["html", "prose", "bad_field", "status_500", "not_http"],
                         argvalues=[
    http_response(200, b"<html>oops</html>", "text/html"),
    completion("Sure! Maria called about her delivery."),
    completion(json.dumps({**LLM_CARD, "handled_by": "the bot"})),
    http_response(500, b'{"error": {"message": "overloaded"}}', "application/json"),
    b"\x00\xffnot http at all\r\n\r\n",
])
async def test_llm_failures_fall_back_to_the_rules(tmp_path: Path, store: Store,
                                                   answer: bytes) -> None:
    async def bad(_: dict[str, Any]) -> bytes:
        return answer
    card, server = await card_via_llm(tmp_path, store, bad)
    assert len(server.requests) == 1                # asked once, no retries
    assert card is not None and card.source == "rules"
    assert (card.caller_name, card.callback_number) == ("Maria", "5551234")


async def test_llm_time_out_falls_back_to_the_rules(tmp_path: Path, store: Store) -> None:
    answered = trio.Event()

    async def never(_: dict[str, Any]) -> bytes:
        await answered.wait()       # set only after the card is made: never, for the client
        return b""
    started = trio.current_time()
    card, server = await card_via_llm(tmp_path, store, never, timeout=0.5)
    answered.set()
    assert len(server.requests) == 1
    assert trio.current_time() - started >= 0.5
    assert card is not None and card.source == "rules" and card.callback_requested


def test_rules_card_is_the_default(tmp_path: Path) -> None:
    assert live_config(tmp_path).current.voicebot.llm.engine == "none"


def test_summary_column_reads_null_for_old_rows(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.sqlite3")
    conn.executescript(f"BEGIN; {MIGRATIONS[0]}; {MIGRATIONS[1]}; PRAGMA user_version = 2; "
                       "COMMIT;")
    conn.execute("INSERT INTO calls (call_id, tenant, caller, callee, callee_extension,"
                 " is_ai_handled, started_at) VALUES ('old','acme','5','1001','1001',1,?)",
                 (ARRIVED.isoformat(),))
    conn.commit()
    conn.close()

    async def opened() -> None:
        async with open_store(tmp_path / "old.sqlite3", Metrics()) as s:
            old = await callstore.get_call(s, "old")
            assert old is not None and old.card is None and old.wire()["summary"] is None
    trio.run(opened)


# -- GET /api/calls/{call_id}, in process (Quart's test client; the daemon tests cover HTTP) --

class _NoLiveCalls:
    """The API's view of live calls when none is up."""

    def get(self, call_id: str) -> None:
        return None

    def active_calls(self) -> list[object]:
        return []


async def test_get_call_returns_the_card_to_its_owner_only(tmp_path: Path,
                                                          store: Store) -> None:
    from voicedashd.api.app import create_app
    from voicedashd.api.deps import ApiDeps
    from voicedashd.auth import Authenticator, encode_access_token
    from voicedashd.passwords import hash_password
    from voicedashd.readiness import Readiness

    password = hash_password("a long enough password")
    users = "".join(f'[[users]]\nextension = "{ext}"\ntenant = "acme"\nrole = "user"\n'
                    f'password_hash = "{password}"\n' for ext in ("1001", "1002"))
    live = live_config(tmp_path, users)
    bus = EventBus(store, Metrics())
    play_call(bus, info("c1"), MESSAGE)
    card = MessageCard(caller_name="Maria", callback_number="5551234", callback_requested=True,
                       reason="Call back.", handled_by=HandledBy.MESSAGE_TAKEN)
    bus.emit(CallSummarized, "c1", **card.wire())
    app = create_app(ApiDeps(live=live, store=store, metrics=Metrics(), readiness=Readiness(),
                             auth=Authenticator(live, store), bus=bus,
                             calls=_NoLiveCalls()))  # type: ignore[arg-type]
    client = app.test_client()

    def bearer(extension: str) -> dict[str, str]:
        [user] = [u for u in live.current.users if u.extension == extension]
        token = encode_access_token(live.current, user, "fam", time.time(), "jti-" + extension)
        return {"Authorization": f"Bearer {token}"}

    owner = await client.get("/api/calls/c1", headers=bearer("1001"))
    assert owner.status_code == 200, await owner.get_data(as_text=True)
    body = await owner.get_json()
    assert body["summary"] == card.wire() and body["state"] == "ended"
    # From the store alone (the bus forgot the call), the same.
    app_fresh = create_app(ApiDeps(live=live, store=store, metrics=Metrics(),
                                   readiness=Readiness(), auth=Authenticator(live, store),
                                   bus=EventBus(store, Metrics()),
                                   calls=_NoLiveCalls()))  # type: ignore[arg-type]
    stored = await app_fresh.test_client().get("/api/calls/c1", headers=bearer("1001"))
    assert (await stored.get_json())["summary"] == card.wire()
    other = await client.get("/api/calls/c1", headers=bearer("1002"))
    missing = await client.get("/api/calls/nope", headers=bearer("1001"))
    assert other.status_code == missing.status_code == 404
    assert await other.get_json() == await missing.get_json()
    assert (await client.get("/api/calls/c1")).status_code == 401


async def test_a_recorded_calls_notice_is_scripted_not_an_answer(tmp_path: Path,
                                                                 store: Store) -> None:
    """The bot said only the notice, the greeting and the fallback: it took a message."""
    live = LiveConfig(parse_config(
        BASE.replace('name = "acme"', 'name = "acme"\nrecord = true\n'
                     'record_notice = "Calls to {extension} are recorded."'),
        path=tmp_path / "voicedashd.toml", environ=ENV))
    bus = EventBus(store, Metrics())
    summarizer = Summarizer(live, bus, store, {})
    play_call(bus, info("c1"), [("bot", "Calls to 1001 are recorded."),
                                ("caller", "Do you sell bicycles?"),
                                ("bot", "Sorry, I don't know the answer to that.")])
    card = await summarizer.card("c1")
    assert card is not None and card.handled_by is HandledBy.MESSAGE_TAKEN
    # Without the notice in the wording, the same line would count as an answer.
    play_call(bus, info("c2"), [("bot", "Calls to 1001 are taped."),
                                ("caller", "Do you sell bicycles?")])
    other = await summarizer.card("c2")
    assert other is not None and other.handled_by is HandledBy.ANSWERED_FROM_KNOWLEDGE
