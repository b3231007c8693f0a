"""Forwarded calls across two tenants and two trunks: each is seen by exactly its owner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.harness import User, make_config, run_daemon
from tests.integration.test_calls_api import Session, token_for
from tests.sipp import SippResult, run_sipp
from voicedashd.hub.client import HubClient, open_hub

HOLD_MS = 12000
TRUNKS = """[[sip.trunks]]
name = "acme-pbx"
sources = ["127.0.0.2/32"]
tenant = "acme"
[[sip.trunks]]
name = "shared-pbx"
sources = ["127.0.0.3/32"]
"""
# Both tenants have a 1001 and a 1004.
OWNERS = {"acme 1001": User("1001"), "acme 1004": User("1004"),
          "globex 1001": User("1001", tenant="globex"),
          "globex 1004": User("1004", tenant="globex")}


@dataclass(frozen=True)
class ForwardedCall:
    """One row of the table: where the INVITE comes from, its headers, and whose call it is."""

    caller: str  # unique per row: how the test tells the calls apart
    source: str
    to: str
    header: str
    owner: str


TABLE = [
    # The shared PBX names no tenant: the domain of the URI the extension came from decides.
    ForwardedCall("5550001", "127.0.0.3", "sip:bot@globex.example",
                  "Diversion: <sip:1004@acme.example>", "acme 1004"),
    ForwardedCall("5550002", "127.0.0.3", "sip:bot@acme.example",
                  "History-Info: <sip:1001@globex.example>, <sip:bot@acme.example>",
                  "globex 1001"),
    ForwardedCall("5550003", "127.0.0.3", "sip:1004@globex.example",
                  "Subject: a plain call", "globex 1004"),
    # acme's own PBX: every call it sends is acme's, whatever domain its headers name.
    ForwardedCall("5550004", "127.0.0.2", "sip:bot@globex.example",
                  "Diversion: <sip:1001@globex.example>", "acme 1001"),
    ForwardedCall("5550005", "127.0.0.2", "sip:1004@globex.example",
                  "Subject: a plain call", "acme 1004"),
    # No trunk (sip.trusted): a tel: Diversion has no domain, so not To's but the default's.
    ForwardedCall("5550006", "127.0.0.1", "sip:bot@globex.example",
                  "Diversion: <tel:1001>", "acme 1001"),
]


async def test_each_forwarded_call_is_seen_by_exactly_its_owner(tmp_path: Path) -> None:
    """Six calls up at once from two trunks and sip.trusted, with Diversion, History-Info and
    plain To across acme and globex: each owner's active list, history and hub lobby hold
    exactly their calls; every other call is 404 to them. A stranger gets 403."""
    config = make_config(tmp_path, users=list(OWNERS.values()),
                         tenants={"acme": ["acme.example"], "globex": ["globex.example"]})
    config.trusted = ("127.0.0.1/32",)  # 127.0.0.2 and .3 may call as trunks only
    config.write()
    config.path.write_text(config.path.read_text().replace("[media]", TRUNKS + "[media]", 1))
    expected = {owner: {row.caller for row in TABLE if row.owner == owner} for owner in OWNERS}
    results: dict[str, SippResult] = {}

    async def place(row: ForwardedCall) -> None:
        fields = tmp_path / f"call-{row.caller}.csv"
        fields.write_text(f"SEQUENTIAL\n{row.to};{row.header};{row.caller};\n")
        results[row.caller] = await run_sipp(
            config.sip_port, tmp_path, scenario="forwarded_call", service="bot",
            local_ip=row.source, extra=("-inf", str(fields), "-d", str(HOLD_MS)), timeout=40)

    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            tokens = {name: await token_for(http, user) for name, user in OWNERS.items()}
            sessions = {name: Session(http, token) for name, token in tokens.items()}
            hub_url = f"ws://127.0.0.1:{config.hub_port}/ws"
            async with trio.open_nursery() as nursery:
                hubs: dict[str, HubClient] = {}
                for name, token in tokens.items():
                    hubs[name] = await nursery.start(_hub, hub_url, token, config.api_url)
                for row in TABLE:
                    nursery.start_soon(place, row)
                await daemon.wait_for_count("call_started", len(TABLE))
                calls = {line["caller"]: line["call_id"]
                         for line in daemon.events("call_started")}
                assert set(calls) == {row.caller for row in TABLE}

                stranger = await run_sipp(config.sip_port, tmp_path, scenario="forbidden",
                                          local_ip="127.0.0.4", timeout=10)
                assert stranger.ok, stranger.errors

                for name in OWNERS:
                    await _check_owner(name, sessions[name], hubs[name], calls, expected[name])
                nursery.cancel_scope.cancel()  # the hub connections; the calls go on
            for row in TABLE:
                await daemon.wait_for_log("call_ended", call_id=calls[row.caller], timeout=30)
    assert all(r.ok for r in results.values()), {k: r.errors for k, r in results.items()}
    assert len(daemon.events("sip_invite_untrusted")) == 1
    assert len(daemon.events("call_started")) == len(TABLE)


async def _hub(url: str, token: str, origin: str, *,
               task_status: trio.TaskStatus[HubClient] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_hub(url, token, origin=origin) as hub:
        task_status.started(hub)
        await trio.sleep_forever()


async def _check_owner(name: str, session: Session, hub: HubClient, calls: dict[str, str],
                       mine: set[str]) -> None:
    """The owner sees exactly their calls in each place, and 404 for every other call."""
    active = (await session.get("/api/calls/active")).json()
    assert {c["caller"]["number"] for c in active} == mine, (name, active)
    tenant, extension = name.split()
    assert {(c["tenant"], c["callee_extension"]) for c in active} == {(tenant, extension)}
    history = (await session.history())["calls"]
    assert {c["caller"]["number"] for c in history} == mine, (name, history)
    await hub.ping()  # the lobby's call_started frames were sent before this pong
    lobby = [e for e in hub.received() if e["event"] == "call_started"]
    assert sorted(e["data"]["caller"] for e in lobby) == sorted(mine), (name, lobby)
    for caller, call_id in calls.items():
        answer = await session.transcript(call_id)
        assert answer.status_code == (200 if caller in mine else 404), (name, caller)
