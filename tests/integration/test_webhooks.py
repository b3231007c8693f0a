"""Webhooks from the real daemon: sipp calls end, a receiver on 127.0.0.1 checks and counts."""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from tests.harness import DaemonConfig, make_config, run_daemon
from tests.sipp import run_sipp
from tests.webhook_receiver import Received, WebhookReceiver

SECRET = b"the webhook secret of this test, 32 bytes or more"
TENANTS = {"acme": ["acme.example"], "globex": ["globex.example"]}


@asynccontextmanager
async def receiving(receiver: WebhookReceiver) -> AsyncIterator[WebhookReceiver]:
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        yield receiver
        nursery.cancel_scope.cancel()


def configure(tmp_path: Path, *hooks: str) -> DaemonConfig:
    (tmp_path / "webhook-secret").write_bytes(SECRET)
    config = make_config(tmp_path, tenants=TENANTS)
    config.extra = "".join(f'[[webhooks]]\nsecret_file = "webhook-secret"\n{hook}'
                           for hook in hooks)
    config.write()
    return config


def metric(text: str, name: str) -> float:
    """A sample's value from a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_call_is_posted_signed_and_a_receiver_answering_500_twice_gets_the_third_try(
        tmp_path: Path) -> None:
    tries: Counter[str] = Counter()

    def answer(request: Received) -> int:
        tries[request.delivery_id] += 1
        return 500 if tries[request.delivery_id] <= 2 else 200

    async with receiving(WebhookReceiver(SECRET, answer)) as receiver:
        config = configure(
            tmp_path,
            f'url = "{receiver.url}"\nevents = ["call_started", "call_ended"]\n'
            'retry_base = "200ms"\n',
            f'url = "{receiver.url}?only=globex"\nevents = ["call_ended"]\n'
            'tenant = "globex"\n')
        with trio.fail_after(90):
            async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                    base_url=config.api_url) as http:
                result = await run_sipp(config.sip_port, tmp_path, service="1001")
                assert result.ok, result.errors
                ended = await daemon.wait_for_log("call_ended", progress="realtime")
                await receiver.wait_for(lambda got: len([r for r in got if r.status == 200])
                                        == 2, timeout=30)
                await daemon.wait_for_count("webhook_delivered", 2)
                assert SECRET.decode() not in "\n".join(daemon.raw_stderr)
                with trio.fail_after(10):
                    while True:     # the queue depth is read again after the last record
                        page = (await http.get("/metrics")).text
                        if metric(page, "voicedashd_webhook_queue_depth") == 0:
                            break
                        await trio.sleep(0.05)

        got = receiver.received
        assert all(r.signature_ok for r in got)
        assert {r.path for r in got} == {"/hook"}       # the globex webhook got nothing
        by_id: dict[str, list[Received]] = {}
        for request in got:
            by_id.setdefault(request.delivery_id, []).append(request)
        assert len(by_id) == 2
        for requests in by_id.values():
            assert [r.status for r in requests] == [500, 500, 200]
            assert [r.headers["x-voicedashd-attempt"] for r in requests] == ["1", "2", "3"]
            assert len({r.body for r in requests}) == 1
            assert requests[2].at - requests[1].at >= 0.2       # second wait: 200-400 ms
        events = {r[0].headers["x-voicedashd-event"]: r[0].json() for r in by_id.values()}
        assert set(events) == {"call_started", "call_ended"}
        body = events["call_ended"]
        assert body["event"]["call_id"] == ended["call_id"]
        assert body["event"]["seq"] == ended["seq"]
        assert body["event"]["data"]["reason"] == ended["reason"]
        assert body["tenant"] == "acme"
        assert body["call"]["callee_extension"] == "1001"
        assert body["call"]["state"] == "ended"
        assert events["call_started"]["event"]["data"]["callee_extension"] == "1001"
        assert metric(page, 'voicedashd_webhook_deliveries_total{outcome="delivered"}') == 2
        assert metric(page, 'voicedashd_webhook_attempt_failures_total{reason="status"}') == 4
        assert metric(page, "voicedashd_webhook_retries_total") == 4
        assert metric(page, "voicedashd_webhook_enqueued_total") == 2


async def test_a_restart_between_tries_still_delivers_exactly_once(tmp_path: Path) -> None:
    state = {"answer": 503}
    async with receiving(WebhookReceiver(SECRET, lambda _: state["answer"])) as receiver:
        config = configure(tmp_path, f'url = "{receiver.url}"\nevents = ["call_ended"]\n'
                                     'retry_base = "2s"\n')
        with trio.fail_after(120):
            async with run_daemon(config.path) as daemon:
                result = await run_sipp(config.sip_port, tmp_path, calls=3, rate=10,
                                        service="1001")
                assert result.ok, result.errors
                await receiver.wait_for(lambda got: len({r.delivery_id for r in got}) == 3,
                                        timeout=30)
            # Stopped with three deliveries waiting for a later try.
            first_ids = {r.delivery_id for r in receiver.received}
            assert len(first_ids) == 3
            assert receiver.delivered() == []
            state["answer"] = 200
            async with run_daemon(config.path) as daemon:       # same store
                await receiver.wait_for(lambda _: len(receiver.delivered()) == 3, timeout=30)
                await daemon.wait_for_count("webhook_delivered", 3)
        delivered = [r.delivery_id for r in receiver.delivered()]
        assert sorted(delivered) == sorted(first_ids)           # each id delivered once
        assert all(r.signature_ok for r in receiver.received)
        with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
            states = conn.execute("SELECT state, COUNT(*) FROM webhook_deliveries"
                                  " GROUP BY state").fetchall()
        assert states == [("delivered", 3)]


async def test_a_webhook_added_by_a_reload_gets_the_next_calls_events(tmp_path: Path) -> None:
    async with receiving(WebhookReceiver(SECRET)) as receiver:
        config = configure(tmp_path)
        with trio.fail_after(90):
            async with run_daemon(config.path) as daemon:
                config.extra = (f'[[webhooks]]\nurl = "{receiver.url}"\n'
                                'secret_file = "webhook-secret"\nevents = ["call_ended"]\n')
                config.write()
                daemon.send_signal(signal.SIGHUP)
                reloaded = await daemon.wait_for_log("config_reloaded")
                assert "webhooks.url" in reloaded["applied"]
                result = await run_sipp(config.sip_port, tmp_path, service="1001")
                assert result.ok, result.errors
                (got,) = await receiver.wait_for(lambda got: len(got) == 1, timeout=30)
        assert got.signature_ok and got.status == 200
        assert got.headers["x-voicedashd-event"] == "call_ended"
