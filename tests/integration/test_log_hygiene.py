"""Log hygiene against the real daemon: a caller's control characters and DTMF digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio

from tests.harness import User, make_config, run_daemon
from tests.integration.test_calls_api import Session, token_for
from tests.sipp import run_sipp
from tests.stored import stored_events
from voicedashd.events import printable

# ESC [31m (red), RLO (U+202E) and PDF: recolours a terminal, shows the rest reversed.
DIRTY_NAME = "Bank\x1b[31m \u202eSupport\u202c"
CLEAN_NAME = "Bank[31m Support"
DIGITS = "0123456789*#"  # what dtmf_call.xml dials


def injection_file(path: Path, name: str, number: str) -> Path:
    """A sipp -inf file with one caller (fields: display name; number)."""
    path.write_bytes(f"SEQUENTIAL\n{name};{number};\n".encode())
    return path


def strings(value: Any) -> list[str]:
    """Every string inside a parsed JSON value (keys too)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


async def test_a_callers_control_characters_and_digits_stay_out_of_the_log(
        tmp_path: Path) -> None:
    """A From display name with ESC [31m and U+202E, a number with an escaped ESC, and twelve
    DTMF keys: events and history carry the clean name and every digit; the daemon's stderr
    (JSON lines) carries neither a control or bidi character nor a digit."""
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    callers = injection_file(tmp_path / "callers.csv", DIRTY_NAME, "555%1b1234")
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            result = await run_sipp(config.sip_port, tmp_path, scenario="dtmf_call",
                                    extra=("-inf", str(callers), "-d", "500"), timeout=30)
            assert result.ok, result.errors
            ended = await daemon.wait_for_log("call_ended")
            alice_sees = Session(http, await token_for(http, alice))
            [call] = (await alice_sees.history())["calls"]
    call_id = ended["call_id"]
    assert call["call_id"] == call_id
    assert (call["caller"], call["caller_name"]) == (
        {"number": "5551234", "name": CLEAN_NAME}, CLEAN_NAME)
    database = config.dir / "store.sqlite3"
    [started] = stored_events(database, "call_started", call_id)
    assert (started["caller"], started["caller_name"]) == ("5551234", CLEAN_NAME)
    assert [e["digit"] for e in stored_events(database, "dtmf", call_id)] == list(DIGITS)

    raw = "\n".join(daemon.raw_stderr)
    assert daemon.logs and len(daemon.logs) == len(daemon.raw_stderr), "not all JSON lines"
    dirty = [s for line in daemon.logs for s in strings(line) if printable(s) != s]
    assert not dirty, dirty
    assert "\\u001b" not in raw.lower() and "\\u202e" not in raw.lower()
    assert "\x1b" not in raw and "\u202e" not in raw
    logged_name = daemon.events("call_ringing")[0]
    assert logged_name["caller"] == "5551234"
    dtmf_lines = daemon.events("dtmf")
    assert len(dtmf_lines) == len(DIGITS)
    assert {line["digit"] for line in dtmf_lines} == {"[redacted]"}
    assert not [line for line in daemon.logs if line.get("event") != "dtmf" and any(
        "digit" in key for key in line)]
    assert "*#" not in raw and '"#"' not in raw and '"*"' not in raw
