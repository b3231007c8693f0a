"""kill -9 during a call, restart on the same store: history, transcript and hub resume agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.harness import User, make_config, run_daemon
from tests.integration.test_calls_api import Session, token_for
from tests.sipp import run_sipp
from voicedashd.events import event_types
from voicedashd.hub.client import HubClient, open_hub

# README (Operations, "After a crash"): a kill -9 loses at most the events published in the
# last half second; the store writer commits each batch as soon as the one before is done.
LOSS_BOUND = timedelta(seconds=0.5)
KEYS_BEFORE_KILL = 4


async def _next(hub: HubClient, name: str) -> dict[str, Any]:
    async for event in hub:
        if event["event"] == name:
            return event
    raise AssertionError(f"the hub closed before {name}")


def _published(logs: list[dict[str, Any]], call_id: str) -> list[dict[str, Any]]:
    """The call's events as the bus logged them when it published them (one line each)."""
    names = set(event_types())
    return [line for line in logs if line.get("call_id") == call_id
            and line.get("event") in names and "seq" in line]


async def test_a_call_cut_by_kill_9_is_closed_alike_in_history_transcript_and_hub(
        tmp_path: Path) -> None:
    """A caller keeps pressing keys (a dtmf event every 0.4 s); the daemon is killed just over
    LOSS_BOUND after the hub showed the fourth. After a restart on the same store the call is
    `interrupted` in history, ended at its last stored event; every event published more than
    LOSS_BOUND before the kill is stored, and the stored stream ends with call_ended and then
    the call's message card, made at start, which a hub client resuming from the last seq it
    saw before the kill receives."""
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    callers = tmp_path / "callers.csv"
    callers.write_text("SEQUENTIAL\nKeys Caller;5551234;\n")
    hub_url = f"ws://127.0.0.1:{config.hub_port}/ws"
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            token = await token_for(http, alice)
            async with open_hub(hub_url, token, origin=config.api_url) as hub, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(partial(
                    run_sipp, config.sip_port, tmp_path, scenario="dtmf_call",
                    extra=("-inf", str(callers), "-d", "500"), timeout=30))
                started = await _next(hub, "call_started")
                call_id = started["call_id"]
                seen = [started, *(await hub.subscribe(call_id, since_seq=1)).events]
                while sum(e["event"] == "dtmf" for e in seen) < KEYS_BEFORE_KILL:
                    seen.append(await hub.__anext__())
                await trio.sleep((LOSS_BOUND * 1.2).total_seconds())  # more keys meanwhile
                killed_at = datetime.now(UTC)
                daemon.process.kill()
                await daemon.process.wait()
                seen += hub.received()
                nursery.cancel_scope.cancel()  # sipp, whose call is gone
        published = _published(daemon.logs, call_id)

    last_seen = max(e["seq"] for e in seen)
    must_survive = [line["seq"] for line in published
                    if datetime.fromisoformat(line["timestamp"]) < killed_at - LOSS_BOUND]
    assert [e["event"] for e in seen].count("dtmf") >= KEYS_BEFORE_KILL + 1, seen

    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            closed = await daemon.wait_for_log("store_unfinished_calls_closed")
            assert closed["count"] == 1
            # The call the kill cut short gets its message card at start, after its end.
            caught_up = await daemon.wait_for_log("call_summaries_caught_up", timeout=30)
            assert caught_up["count"] == 1
            metrics = (await http.get("/metrics")).text
            assert 'voicedashd_calls_ended_total{reason="interrupted"} 1.0' in metrics
            token = await token_for(http, alice)
            alice_sees = Session(http, token)
            [call] = (await alice_sees.history())["calls"]
            transcript = await alice_sees.transcript(call_id)
            async with open_hub(hub_url, token, origin=config.api_url) as hub:
                everything = await hub.subscribe(call_id, since_seq=0)
            async with open_hub(hub_url, token, origin=config.api_url) as hub:
                resumed = await hub.subscribe(call_id, since_seq=last_seen)

    stored = everything.events
    *before, ended, card = stored
    assert (card["event"], card["seq"]) == ("call_summary", ended["seq"] + 1), stored
    assert call["summary"] == {key: card["data"][key] for key in call["summary"]}
    assert call["summary"]["handled_by"] == "message_taken"  # keys pressed, nothing said
    assert (ended["event"], ended["data"]["reason"]) == ("call_ended", "interrupted"), stored
    assert ended["seq"] > last_seen
    assert ended["ts"] == before[-1]["ts"]  # the time of the last stored event
    stored_seqs = [e["seq"] for e in before]
    assert stored_seqs == list(range(1, len(before) + 1))  # nothing lost in the middle
    assert set(must_survive) <= set(stored_seqs), (must_survive, stored_seqs)
    assert len(must_survive) >= 1 + KEYS_BEFORE_KILL
    for event in seen:     # what the hub showed before the kill is what was stored
        if event["seq"] in stored_seqs:
            assert event == before[event["seq"] - 1]

    assert (call["call_id"], call["state"], call["end_reason"]) == (
        call_id, "ended", "interrupted")
    assert datetime.fromisoformat(call["ended_at"]) == datetime.fromisoformat(ended["ts"])
    assert call["duration"] == round((datetime.fromisoformat(ended["ts"]) - datetime.fromisoformat(
        call["answered_at"])).total_seconds(), 3) == ended["data"]["duration"]
    assert everything.call["end_reason"] == "interrupted"
    assert transcript.status_code == 200
    assert transcript.json()["ended"] is True

    assert resumed.events == [ended, card]
