"""The webhook queue and sender on a real store, posting to a receiver on 127.0.0.1."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trio
import trio.testing

from tests.harness import free_port
from tests.webhook_receiver import WebhookReceiver
from voicedashd.bus import EventBus
from voicedashd.config import WebhookConfig
from voicedashd.events import CallEnded, CallInfo, EndReason, SttTranscript
from voicedashd.metrics import Metrics
from voicedashd.store import Store, open_store
from voicedashd.webhooks import WebhookOutbox
from voicedashd.webhooks.sender import WebhookSender

SECRET = b"webhook secret of at least 32 bytes, for tests"
T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)


def webhook(url: str, events: tuple[str, ...] = ("call_ended",), tenant: str | None = None,
            retry_base: str = "100ms", secret: bytes = SECRET) -> WebhookConfig:
    hook = WebhookConfig(url=url, secret_file=Path("hook-secret"), events=events, tenant=tenant,
                         retry_base=retry_base)
    hook._secret = secret       # what load_config reads from secret_file
    return hook


def info(call_id: str, tenant: str = "acme") -> CallInfo:
    return CallInfo(call_id=call_id, tenant=tenant, caller="5551234", caller_name="Maria",
                    callee="1001", callee_extension="1001", is_ai_handled=True, created_at=T0)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Daemon:
    """The parts of the daemon webhooks use: store, writer, bus, outbox and sender."""

    def __init__(self, store: Store, outbox: WebhookOutbox, metrics: Metrics) -> None:
        self.store, self.outbox, self.metrics = store, outbox, metrics
        self.bus = EventBus(store, metrics)

    def call(self, call_id: str, tenant: str = "acme") -> None:
        """A call that says one line and ends."""
        self.bus.register(info(call_id, tenant))
        self.bus.emit(SttTranscript, call_id, text="this is Maria", is_final=True)
        self.bus.emit(CallEnded, call_id, reason=EndReason.CALLER_HANGUP, duration=3.0)

    async def until(self, name: str, value: float, **labels: str) -> None:
        """Wait until a metric reaches value; each queue change is a chance to look."""
        with trio.fail_after(10):
            while sample(self.metrics, name, **labels) < value:
                await self.outbox.changed.wait()

    async def until_drained(self) -> None:
        """Wait until the sender has seen its queue empty."""
        with trio.fail_after(10):
            while sample(self.metrics, "voicedashd_webhook_queue_depth") != 0:
                await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def running(path: Path, hooks: list[WebhookConfig], *, timeout: float = 5.0
                  ) -> AsyncIterator[Daemon]:
    metrics = Metrics()
    outbox = WebhookOutbox(lambda: hooks, metrics)
    async with open_store(path, metrics, outbox) as store, httpx.AsyncClient() as client, \
            trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        sender = WebhookSender(store, outbox, lambda: hooks, metrics, client, timeout=timeout)
        nursery.start_soon(sender.run, nursery)
        yield Daemon(store, outbox, metrics)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def receiving(receiver: WebhookReceiver) -> AsyncIterator[WebhookReceiver]:
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        yield receiver
        nursery.cancel_scope.cancel()


def rows(path: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


async def test_a_subscribed_event_is_posted_signed_with_the_call(tmp_path: Path) -> None:
    async with receiving(WebhookReceiver(SECRET)) as receiver:
        hooks = [webhook(receiver.url), webhook(receiver.url + "?tenant=globex",
                                                tenant="globex")]
        async with running(tmp_path / "store.sqlite3", hooks) as daemon:
            daemon.call("c-1")
            await daemon.until("voicedashd_webhook_deliveries_total", 1, outcome="delivered")
            await daemon.until_drained()
        (got,) = receiver.received
        assert got.method == "POST" and got.path == "/hook"
        assert got.signature_ok
        assert got.headers["content-type"] == "application/json"
        assert got.headers["x-voicedashd-event"] == "call_ended"
        assert got.headers["x-voicedashd-attempt"] == "1"
        body = got.json()
        assert body["delivery_id"] == got.delivery_id
        assert body["tenant"] == "acme"
        assert body["event"]["event"] == "call_ended"
        assert body["event"]["call_id"] == "c-1"
        assert body["event"]["seq"] == 2
        assert body["event"]["data"] == {"reason": "caller_hangup", "duration": 3.0}
        assert body["call"]["caller"] == {"number": "5551234", "name": "Maria"}
        assert body["call"]["callee_extension"] == "1001"
        assert body["call"]["end_reason"] == "caller_hangup"
        assert sample(daemon.metrics, "voicedashd_webhook_enqueued_total") == 1


async def test_the_delivery_is_stored_in_the_events_transaction(tmp_path: Path) -> None:
    """Once the event is committed its delivery is too: a crash after it loses nothing."""
    path = tmp_path / "store.sqlite3"
    hooks = [webhook(f"http://127.0.0.1:{free_port()}/hook",
                     events=("stt_transcript", "call_ended")),
             webhook("http://127.0.0.1:9/globex", tenant="globex")]
    metrics = Metrics()
    outbox = WebhookOutbox(lambda: hooks, metrics)
    async with open_store(path, metrics, outbox) as store, trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        Daemon(store, outbox, metrics).call("c-1")
        await store.flush()
        nursery.cancel_scope.cancel()
    stored = rows(path, "SELECT event, call_id, state, attempts, url FROM webhook_deliveries"
                        " ORDER BY event")
    assert [tuple(r) for r in stored] == [
        ("call_ended", "c-1", "pending", 0, hooks[0].url),
        ("stt_transcript", "c-1", "pending", 0, hooks[0].url)]
    assert sample(metrics, "voicedashd_webhook_enqueued_total") == 2


async def test_a_call_closed_after_a_crash_sends_its_interrupted_call_ended(
        tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    async with open_store(path, Metrics()) as store, trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        store.submit_call(info("c-open"))
        await store.flush()
        nursery.cancel_scope.cancel()
    async with receiving(WebhookReceiver(SECRET)) as receiver:
        async with running(path, [webhook(receiver.url)]) as daemon:
            assert await daemon.store.mark_unfinished_calls("interrupted") == 1
            await daemon.until("voicedashd_webhook_deliveries_total", 1, outcome="delivered")
        (got,) = receiver.received
        assert got.json()["event"]["data"]["reason"] == "interrupted"


async def test_a_receiver_answering_500_twice_gets_the_third_try(tmp_path: Path) -> None:
    answers = iter([500, 500, 204])
    async with receiving(WebhookReceiver(SECRET, lambda _: next(answers))) as receiver:
        async with running(tmp_path / "store.sqlite3", [webhook(receiver.url)]) as daemon:
            daemon.call("c-1")
            await daemon.until("voicedashd_webhook_deliveries_total", 1, outcome="delivered")
        tries = receiver.received
        assert [r.status for r in tries] == [500, 500, 204]
        assert len({r.delivery_id for r in tries}) == 1
        assert len({r.body for r in tries}) == 1 and all(r.signature_ok for r in tries)
        assert [r.headers["x-voicedashd-attempt"] for r in tries] == ["1", "2", "3"]
        # Back-off of 100 ms doubling, each wait in the upper half of its ceiling.
        assert tries[1].at - tries[0].at >= 0.05
        assert tries[2].at - tries[1].at >= 0.1
        m = daemon.metrics
        assert sample(m, "voicedashd_webhook_attempt_failures_total", reason="status") == 2
        assert sample(m, "voicedashd_webhook_retries_total") == 2
        stored = rows(tmp_path / "store.sqlite3",
                      "SELECT state, attempts, last_error FROM webhook_deliveries")
        assert [tuple(r) for r in stored] == [("delivered", 3, None)]


async def test_a_restart_between_tries_delivers_each_delivery_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    status = {"answer": 500}
    async with receiving(WebhookReceiver(SECRET, lambda _: status["answer"])) as receiver:
        hooks = [webhook(receiver.url, retry_base="1s")]
        async with running(path, hooks) as first:
            first.call("c-1")
            first.call("c-2")
            await first.until("voicedashd_webhook_attempt_failures_total", 2, reason="status")
        assert [r.status for r in receiver.received] == [500, 500]
        status["answer"] = 200
        async with running(path, hooks) as second:         # the next process, same store
            await second.until("voicedashd_webhook_deliveries_total", 2, outcome="delivered")
        delivered = [r.delivery_id for r in receiver.delivered()]
        assert sorted(delivered) == sorted({r.delivery_id for r in receiver.received})
        assert len(delivered) == len(set(delivered)) == 2
        stored = rows(path, "SELECT state, attempts FROM webhook_deliveries")
        assert sorted(tuple(r) for r in stored) == [("delivered", 2), ("delivered", 2)]


async def test_unreachable_and_silent_receivers_are_retried(tmp_path: Path) -> None:
    hooks = [webhook(f"http://127.0.0.1:{free_port()}/closed", retry_base="1h")]
    async with running(tmp_path / "store.sqlite3", hooks, timeout=0.3) as daemon:
        daemon.call("c-1")
        await daemon.until("voicedashd_webhook_attempt_failures_total", 1, reason="connection")
    async with trio.open_nursery() as nursery:
        # Accepts and reads, never answers.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def hold(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()
        nursery.start_soon(trio.serve_listeners, hold, listeners)
        hooks = [webhook(f"http://127.0.0.1:{port}/silent", retry_base="1h")]
        async with running(tmp_path / "other.sqlite3", hooks, timeout=0.3) as daemon:
            daemon.call("c-2")
            await daemon.until("voicedashd_webhook_attempt_failures_total", 1, reason="timeout")
            await daemon.store.flush()
        nursery.cancel_scope.cancel()
    stored = rows(tmp_path / "other.sqlite3",
                  "SELECT state, attempts, last_error, next_attempt_at - created_at AS wait"
                  " FROM webhook_deliveries")
    ((state, attempts, error, wait),) = (tuple(r) for r in stored)
    assert (state, attempts, error) == ("pending", 1, "no answer within 0.3s")
    assert 1800 <= wait <= 3601


async def test_a_webhook_removed_from_the_config_drops_its_pending_deliveries(
        tmp_path: Path) -> None:
    hooks = [webhook(f"http://127.0.0.1:{free_port()}/gone")]
    path = tmp_path / "store.sqlite3"
    async with running(path, hooks) as daemon:
        daemon.call("c-1")
        await daemon.until("voicedashd_webhook_attempt_failures_total", 1, reason="connection")
    async with running(path, []) as daemon:          # restarted without it
        await daemon.until("voicedashd_webhook_deliveries_total", 1, outcome="removed")
    stored = rows(path, "SELECT state, attempts, last_error FROM webhook_deliveries")
    assert [tuple(r) for r in stored] == [("failed", 1, "webhook removed from config")]


async def test_an_event_stored_once_is_enqueued_once(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    hooks = [webhook("http://127.0.0.1:9/hook")]
    outbox = WebhookOutbox(lambda: hooks, Metrics())
    ended = CallEnded(call_id="c-1", seq=2, ts=T0, reason=EndReason.CALLER_HANGUP, duration=1.0)
    async with open_store(path, Metrics(), outbox) as store, trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        store.submit_call(info("c-1"))
        store.submit(ended)
        store.submit(ended)         # the same (call_id, seq): ignored by the events table
        await store.flush()
        nursery.cancel_scope.cancel()
    assert len(rows(path, "SELECT * FROM events")) == 1
    assert len(rows(path, "SELECT * FROM webhook_deliveries")) == 1
