"""What reaches logs and terminals: no control or bidi characters from callers, no DTMF digits."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
import structlog

from voicedashd.config import LogConfig
from voicedashd.events import CallInfo, CallStarted, printable
from voicedashd.logs import configure_logging

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
# ESC [31m (red), RLO (U+202E) and PDF: a name that recolours a terminal and reverses itself.
DIRTY_NAME = "Bank\x1b[31m \u202eSupport\u202c"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Alice Caller", "Alice Caller"),
        ("Zoë Ångström 山田", "Zoë Ångström 山田"),        # letters of every script stay
        (DIRTY_NAME, "Bank[31m Support"),
        ("a\x00b\x07c\x7fd", "abcd"),                       # C0 and DEL
        ("a\x85b\x9bc\x80d\x9fe", "a bcde"),                # C1 (NEL is a line break)
        ("tab\tnew\nline\r\u2028sep\u2029", "tab new line  sep "),
        ("\u202a\u202b\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061cx", "x"),  # bidi
        ("\u00a0no-break and soft\u00adhyphen", "\u00a0no-break and soft\u00adhyphen"),
    ],
)
def test_printable_removes_control_and_bidi_characters(text: str, expected: str) -> None:
    assert printable(text) == expected


def test_every_control_and_bidi_character_is_removed() -> None:
    controls = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
                *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
    cleaned = printable("".join(map(chr, controls)))
    assert cleaned.strip(" ") == ""
    assert all(0x20 <= ord(c) < 0x7F or ord(c) >= 0xA0 for c in printable(
        "".join(map(chr, range(0x3000)))))


def test_who_calls_whom_is_printable_in_call_info_and_call_started() -> None:
    info = CallInfo(call_id="c", tenant="acme", caller="555%\x1b1234", caller_name=DIRTY_NAME,
                    callee="10\u202e01", callee_extension="1001\x00", is_ai_handled=True,
                    created_at=T0)
    assert (info.caller, info.caller_name, info.callee, info.callee_extension) == (
        "555%1234", "Bank[31m Support", "1001", "1001")
    blank = CallInfo(call_id="c", tenant="acme", caller="5", caller_name="\x1b\u202e \t",
                     callee="1", callee_extension="1", is_ai_handled=True, created_at=T0)
    assert blank.caller_name is None
    started = CallStarted(call_id="c", seq=1, ts=T0, tenant="acme", caller="5\x9b5",
                          caller_name=DIRTY_NAME, callee="1", callee_extension="1",
                          is_ai_handled=True, started_at=T0)
    assert (started.caller, started.caller_name) == ("55", "Bank[31m Support")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog and stdlib logging back as they were (not on a closed capture stream)."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_dtmf_digits_are_redacted_unless_enabled(capsys: pytest.CaptureFixture[str],
                                                 restore_logging: None,
                                                 log_format: str) -> None:
    log = structlog.get_logger("test")
    configure_logging(LogConfig(format=log_format))  # type: ignore[arg-type]
    log.info("dtmf", call_id="c", seq=3, digit="7", duration=0.2)
    hidden = capsys.readouterr().err
    if log_format == "json":
        assert json.loads(hidden)["digit"] == "[redacted]"
    assert "digit='7'" not in hidden and "digit=7" not in hidden and '"7"' not in hidden
    assert "[redacted]" in hidden
    configure_logging(LogConfig(format=log_format, dtmf_digits=True))  # type: ignore[arg-type]
    log.info("dtmf", call_id="c", seq=3, digit="7", duration=0.2)
    shown = capsys.readouterr().err
    assert "[redacted]" not in shown
    if log_format == "json":
        assert json.loads(shown)["digit"] == "7"
    else:
        assert "digit=7" in shown


def _watch_calls() -> ModuleType:
    path = REPO / "scripts" / "watch-calls"
    loader = importlib.machinery.SourceFileLoader("watch_calls", str(path))
    spec = importlib.util.spec_from_loader("watch_calls", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_watch_calls_prints_no_control_or_bidi_character(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the hub sends (an old stored event, another daemon), the terminal gets none."""
    watch = _watch_calls()
    frames = [
        {"event": "call_started", "call_id": "e46354fb00", "seq": 1, "ts": T0.isoformat(),
         "data": {"caller": "555\x1b]0;owned\x07", "caller_name": DIRTY_NAME,
                  "callee_extension": "1001\u202e"}},
        {"event": "stt_transcript", "call_id": "e46354fb00", "seq": 2, "ts": T0.isoformat(),
         "data": {"speaker": "caller", "text": "hi\x1b[2J\rthere", "is_final": True}},
        {"event": "dtmf", "call_id": "e46354fb00", "seq": 3, "ts": T0.isoformat(),
         "data": {"digit": "\x1b[1A5", "duration": 0.2}},
    ]
    for frame in frames:
        watch.say(watch.describe(frame))
    out = capsys.readouterr().out
    assert out.count("\n") == len(frames)
    assert not [c for c in out if c != "\n" and printable(c) != c], repr(out)
    assert 'from 555]0;owned "Bank[31m Support" to 1001' in out


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_no_log_line_carries_a_control_or_bidi_character(
        capsys: pytest.CaptureFixture[str], restore_logging: None, log_format: str) -> None:
    """Whatever a SIP peer got into a value (a parse error quoting its header, say)."""
    log = structlog.get_logger("test")
    configure_logging(LogConfig(format=log_format))  # type: ignore[arg-type]
    log.info("sip_malformed", reason=f"bad display name: '{DIRTY_NAME}'\r\nInjected: line")
    try:
        raise ValueError(f"header {DIRTY_NAME}")
    except ValueError:
        log.exception("sip_request_failed")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert not [c for c in err if c != "\n" and printable(c) != c], repr(err)
    if log_format == "json":
        first, second = (json.loads(line) for line in lines)
        assert first["reason"] == "bad display name: 'Bank[31m Support'  Injected: line"
        assert "header Bank[31m Support" in second["exception"]
        assert "\n" in second["exception"]  # a traceback keeps its lines
    else:
        assert "Injected: line" in lines[0]  # no line of its own
