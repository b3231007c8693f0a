"""Unread and handled over the real API: sipp places calls, httpx marks them and reads them
back, per user, across a daemon restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.harness import RunningDaemon, User, make_config, run_daemon
from tests.integration.test_calls_api import TENANTS, Session, token_for, write_config
from tests.sipp import run_sipp

TIMEOUT = 90
UNKNOWN = "0123456789abcdef01234567"


class Inbox(Session):
    """A user's session with the inbox calls."""

    async def mark(self, call_id: str, what: str, method: str = "POST") -> httpx.Response:
        return await self.http.request(method, f"/api/calls/{call_id}/{what}",
                                       headers=self.headers)

    async def state(self, call_id: str, what: str, method: str = "POST") -> str:
        answer = await self.mark(call_id, what, method)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["call_id"] == call_id, body
        return str(body["inbox"])

    async def counts(self) -> dict[str, int]:
        answer = await self.get("/api/calls/counts")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def states(self) -> dict[str, str]:
        """Every call of the history with its state (one big page)."""
        page = await self.history(limit=100)
        assert page["next_before"] is None
        return {call["call_id"]: call["inbox"] for call in page["calls"]}

    async def one(self, call_id: str) -> dict[str, Any]:
        answer = await self.get(f"/api/calls/{call_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def filtered(self, state: str) -> list[str]:
        """The history filtered by state, walked one call per page."""
        ids: list[str] = []
        params: dict[str, Any] = {"state": state, "limit": 1}
        while True:
            page = await self.history(**params)
            assert all(call["inbox"] == state for call in page["calls"]), page
            ids += [call["call_id"] for call in page["calls"]]
            if page["next_before"] is None:
                return ids
            params["before"] = page["next_before"]


async def _sessions(http: httpx.AsyncClient, users: dict[str, User]) -> dict[str, Inbox]:
    return {name: Inbox(http, await token_for(http, user)) for name, user in users.items()}


async def _check_agree(me: Inbox) -> dict[str, str]:
    """Counts, the filter and the calls' own field say the same; return the states."""
    states = await me.states()
    counts = await me.counts()
    for state in ("new", "open", "handled"):
        wanted = [call_id for call_id, s in states.items() if s == state]
        assert await me.filtered(state) == wanted, state
        assert counts[state] == len(wanted), (counts, states)
    return states


async def _long_call(port: int, directory: Path) -> None:
    result = await run_sipp(port, directory, scenario="long_call", service="1001")
    assert result.ok, result.errors


async def _calls_to(daemon: RunningDaemon, extension: str) -> list[str]:
    return [line["call_id"] for line in daemon.events("call_started")
            if line["callee_extension"] == extension]


async def test_owners_mark_calls_opened_and_handled_and_it_outlasts_a_restart(
        tmp_path: Path) -> None:
    users = {"alice": User("1001"), "bob": User("1002"), "gus": User("1001", tenant="globex"),
             "admin": User("1900", role="admin")}
    config = make_config(tmp_path, users=list(users.values()), tenants=TENANTS)
    write_config(config)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            s = await _sessions(http, users)
            assert await s["alice"].counts() == {"new": 0, "open": 0, "handled": 0}

            # A live call is new for its owner, in the active list and on its own.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_long_call, config.sip_port, tmp_path)
                live = (await daemon.wait_for_log("call_started"))["call_id"]
                [active] = (await s["alice"].get("/api/calls/active")).json()
                assert (active["call_id"], active["inbox"]) == (live, "new")
                assert (await s["alice"].one(live))["inbox"] == "new"
                assert await s["alice"].counts() == {"new": 1, "open": 0, "handled": 0}
                assert await s["alice"].state(live, "opened") == "open"
                [active] = (await s["alice"].get("/api/calls/active")).json()
                assert active["inbox"] == "open"
                assert not daemon.events("call_ended"), "the call ended before the checks"
            for extension in ("1001", "1001", "1002"):
                result = await run_sipp(config.sip_port, tmp_path, service=extension)
                assert result.ok, result.errors
            await daemon.wait_for_count("call_ended", 4)
            first, second, third = await _calls_to(daemon, "1001")
            [bobs] = await _calls_to(daemon, "1002")
            assert first == live

            me = s["alice"]
            assert await _check_agree(me) == {first: "open", second: "new", third: "new"}
            assert await me.state(second, "opened") == "open"
            assert await me.state(second, "opened") == "open"           # idempotent
            assert await me.state(third, "handled") == "handled"        # never opened: fine
            assert await me.state(third, "handled") == "handled"
            assert await me.state(first, "handled") == "handled"
            assert await me.state(first, "handled", "DELETE") == "open"   # reopened
            assert await me.state(first, "handled", "DELETE") == "open"
            assert await me.state(first, "opened") == "open"             # stays open
            assert await me.state(third, "opened") == "handled"          # stays handled
            mine = {first: "open", second: "open", third: "handled"}
            assert await _check_agree(me) == mine
            assert (await me.one(third))["inbox"] == "handled"

            # The admin's marks are the admin's: the owner's states do not move.
            admin = s["admin"]
            assert await admin.counts() == {"new": 4, "open": 0, "handled": 0}
            assert await admin.state(second, "handled") == "handled"
            assert await admin.state(bobs, "opened") == "open"
            assert await _check_agree(admin) == {first: "new", second: "handled",
                                                 third: "new", bobs: "open"}
            assert await _check_agree(me) == mine
            assert await _check_agree(s["bob"]) == {bobs: "new"}

            # Anyone else's mark is 404, word for word as for an unknown call, and changes
            # nothing.
            missing = await me.mark(UNKNOWN, "opened")
            assert missing.status_code == 404
            assert missing.json()["error"] == "not_found"
            for who, call_id in (("bob", second), ("gus", second), ("gus", bobs),
                                 ("alice", bobs)):
                for what, method in (("opened", "POST"), ("handled", "POST"),
                                     ("handled", "DELETE")):
                    answer = await s[who].mark(call_id, what, method)
                    assert answer.status_code == 404, (who, what, method, answer.text)
                    assert answer.content == missing.content
            assert daemon.events("call_mark_forbidden")
            assert await _check_agree(me) == mine
            assert await _check_agree(s["bob"]) == {bobs: "new"}
            assert await s["gus"].counts() == {"new": 0, "open": 0, "handled": 0}
            await _check_bad_requests(http, me, first)

        # Restarted, the marks are all still there.
        async with run_daemon(config.path), httpx.AsyncClient(base_url=config.api_url) as http:
            s = await _sessions(http, users)
            assert await _check_agree(s["alice"]) == mine
            assert await _check_agree(s["admin"]) == {first: "new", second: "handled",
                                                      third: "new", bobs: "open"}
            assert await s["alice"].counts() == {"new": 0, "open": 2, "handled": 1}


async def _check_bad_requests(http: httpx.AsyncClient, me: Inbox, call_id: str) -> None:
    """Wrong input is answered with what was wrong, in one line."""
    bad = await me.get("/api/calls", state="unread")
    assert bad.status_code == 400
    assert bad.json()["error"] == "bad_request"
    detail = bad.json()["detail"]
    assert detail.startswith("state:") and "'new'" in detail and "'handled'" in detail, detail
    wrong = await me.mark(call_id, "opened", "DELETE")
    assert wrong.status_code == 405, wrong.text
    # The order of Allow's methods follows a set's, which changes from run to run.
    assert set(wrong.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}, wrong.headers["Allow"]
    assert (await me.mark(call_id, "open")).status_code == 404
    anonymous = await http.post(f"/api/calls/{call_id}/handled")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    openapi = (await http.get("/openapi.json")).json()
    for path in ("/api/calls/{call_id}/opened", "/api/calls/{call_id}/handled",
                 "/api/calls/counts"):
        assert path in openapi["paths"], path
    assert "inbox" in openapi["components"]["schemas"]["CallSummaryModel"]["properties"]
