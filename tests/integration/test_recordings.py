"""Recordings end to end: sipp callers speaking (festival's voice, not the bot's) to a tenant
that records and one that does not; the notice, the stereo file, the API with Range requests,
who may fetch it, and retention after a restart."""

from __future__ import annotations

import io
import sqlite3
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from tests.harness import (
    DaemonConfig,
    RunningDaemon,
    User,
    free_even_port_range,
    make_config,
    run_daemon,
)
from tests.integration.test_speech_corpus import GREETING
from tests.sipp import run_sipp
from tests.voice_caller import speak
from voicedashd.media.g711 import PCMU

NOTICE = "This call is recorded for training."
MESSAGE = "Hello, this is Maria. Please call me back about my order."
HOLD_MS = 14000
RATE = 16000
FRAME = 320  # 20 ms
LOUD = 300.0  # RMS of 16-bit audio above which a 20 ms frame counts as sound
QUIET = 60.0
TIMEOUT = 150


def recording_config(tmp_path: Path, users: list[User], *, retention_days: int = 30
                     ) -> DaemonConfig:
    """acme records (with NOTICE); globex does not."""
    config = make_config(tmp_path, users=users,
                         tenants={"acme": ["acme.example"], "globex": ["globex.example"]})
    config.rtp_ports = free_even_port_range(40)
    config.extra = f'[voicebot]\ngreeting = "{GREETING}"\n'
    config.write()
    text = config.path.read_text().replace(
        'name = "acme"\n', f'name = "acme"\nrecord = true\nrecord_notice = "{NOTICE}"\n'
        f"retention_days = {retention_days}\n", 1)
    config.path.write_text(text)
    return config


async def place_call(config: DaemonConfig, directory: Path, message: Path, *, extension: str,
                     scenario: str) -> None:
    """sipp calls, plays the message at once, stays up HOLD_MS, hangs up."""
    directory.mkdir()
    (directory / "question.ul").write_bytes(message.read_bytes())
    result = await run_sipp(config.sip_port, directory, scenario=scenario, service=extension,
                            extra=("-d", str(HOLD_MS), "-mp", str(free_even_port_range(4)[0])))
    assert result.ok, result.errors


async def token(http: httpx.AsyncClient, user: User) -> dict[str, str]:
    """The Authorization header of a logged-in user."""
    login = await http.post("/api/auth/login", json={
        "extension": user.extension, "password": user.password, "tenant": user.tenant})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def levels(channel: np.ndarray) -> np.ndarray:
    """RMS of each 20 ms frame."""
    frames = channel[:len(channel) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return np.sqrt(np.mean(frames ** 2, axis=1))


def caller_levels(ulaw: bytes) -> np.ndarray:
    """RMS of each 20 ms packet of what the caller sent."""
    return np.array([float(np.sqrt(np.mean(PCMU.decode(ulaw[i:i + 160]).astype(np.float64)
                                           ** 2))) for i in range(0, len(ulaw) - 159, 160)])


def started(daemon: RunningDaemon, tenant: str) -> str:
    [line] = [e for e in daemon.events("call_started") if e.get("tenant") == tenant]
    return str(line["call_id"])


def bot_lines(daemon: RunningDaemon, call_id: str) -> list[str]:
    return [e["text"] for e in daemon.events("tts_started") if e.get("call_id") == call_id]


async def test_a_recording_tenants_call_is_kept_in_stereo_and_served_to_its_owner_only(
        tmp_path: Path) -> None:
    owner, admin, stranger = User("1001"), User("1000", role="admin"), User("1002")
    other = User("2001", tenant="globex")
    config = recording_config(tmp_path, [owner, admin, stranger, other])
    message = speak(MESSAGE, tmp_path / "message.ul", lead=0.3, tail=1.0)
    sent = caller_levels(message.read_bytes())
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: place_call(config, tmp_path / "acme", message,
                                                      extension="1001",
                                                      scenario="voicebot_call"))
                nursery.start_soon(lambda: place_call(config, tmp_path / "globex", message,
                                                      extension="2001",
                                                      scenario="voicebot_call_globex"))
            recorded, plain = started(daemon, "acme"), started(daemon, "globex")
            ended = await daemon.wait_for_log("call_ended", call_id=recorded)
            saved = await daemon.wait_for_log("call_recording", call_id=recorded)
            await daemon.wait_for_log("call_ended", call_id=plain)
            as_owner, as_admin = await token(http, owner), await token(http, admin)
            as_stranger, as_other = await token(http, stranger), await token(http, other)

            # The bot's first words are the notice, then the greeting: the caller, who spoke at
            # once, did not cut the notice short (a barge-in would have dropped both).
            lines = bot_lines(daemon, recorded)
            assert lines[:2] == [NOTICE, GREETING], lines
            transcript = (await http.get(f"/api/calls/{recorded}/transcript",
                                         headers=as_owner)).json()["entries"]
            assert next(e["text"] for e in transcript if e["speaker"] == "bot") == NOTICE
            # The tenant that does not record: no notice, no recording.
            assert bot_lines(daemon, plain)[0] == GREETING
            assert not [e for e in daemon.events("call_recording") if e["call_id"] == plain]

            call = (await http.get(f"/api/calls/{recorded}", headers=as_owner)).json()
            info = call["recording"]
            assert info == {"url": f"/api/calls/{recorded}/recording",
                            "duration": saved["duration"], "bytes": saved["bytes"]}, call
            assert abs(info["duration"] - ended["duration"]) < 0.5, (info, ended)
            whole = await http.get(info["url"], headers=as_owner)
            assert whole.status_code == 200, whole.text
            assert whole.headers["content-type"] == "audio/wav"
            assert whole.headers["accept-ranges"] == "bytes"
            assert len(whole.content) == info["bytes"] == int(whole.headers["content-length"])
            files = sorted(p.relative_to(tmp_path / "recordings").as_posix()
                           for p in (tmp_path / "recordings").rglob("*") if p.is_file())
            assert files == [saved["file"]] and saved["file"].endswith(f"/{recorded}.wav")

            # Range requests.
            size = info["bytes"]
            head = await http.get(info["url"], headers={**as_owner, "Range": "bytes=0-99"})
            assert head.status_code == 206 and head.content == whole.content[:100]
            assert head.headers["content-range"] == f"bytes 0-99/{size}"
            tail = await http.get(info["url"], headers={**as_owner, "Range": "bytes=-100"})
            assert tail.status_code == 206 and tail.content == whole.content[-100:]
            assert tail.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
            middle = await http.get(info["url"], headers={**as_owner, "Range": "bytes=1000-"})
            assert middle.status_code == 206 and middle.content == whole.content[1000:]
            beyond = await http.get(info["url"], headers={**as_owner,
                                                          "Range": f"bytes={size}-"})
            assert beyond.status_code == 416
            assert beyond.headers["content-range"] == f"bytes */{size}"

            # Who may fetch it: the owner and the tenant's admin; nobody else learns it exists.
            assert (await http.get(info["url"], headers=as_admin)).content == whole.content
            unknown = await http.get("/api/calls/0123456789abcdef01234567/recording",
                                     headers=as_owner)
            for outsider in (as_stranger, as_other):
                refused = await http.get(info["url"], headers=outsider)
                assert refused.status_code == unknown.status_code == 404
                assert refused.json() == unknown.json()
            assert (await http.get(info["url"])).status_code == 401
            none = await http.get(f"/api/calls/{plain}/recording", headers=as_other)
            assert none.status_code == 404
            assert (await http.get(f"/api/calls/{plain}", headers=as_other)).json()[
                "recording"] is None
            fetched = [e for e in daemon.events("call_recording_fetched")
                       if e["call_id"] == recorded]
            assert {e["extension"] for e in fetched} == {"1001", "1000"}
            secrets_seen = [h["Authorization"].split()[1] for h in (as_owner, as_admin)]
            assert not [line for line in daemon.raw_stderr
                        if any(secret in line for secret in secrets_seen)]

    # The file: stereo, 16 kHz, as long as the call; the caller left, the bot right.
    with wave.open(io.BytesIO(whole.content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        assert abs(wav.getnframes() / RATE - info["duration"]) < 0.01
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    left, right = levels(samples[0::2]), levels(samples[1::2])
    assert_caller_on_the_left(left, sent)
    assert_bot_on_the_right(left, right, sent)


def assert_caller_on_the_left(left: np.ndarray, sent: np.ndarray) -> None:
    """The left channel is loud where (and only where) the caller's packets were, a little
    later (the jitter buffer, a tick)."""
    loud_sent = sent > LOUD
    best = max(range(0, 11), key=lambda shift: _agreement(loud_sent, left[shift:] > LOUD))
    assert best <= 8, best  # at most 160 ms behind what sipp sent
    assert _agreement(loud_sent, left[best:] > LOUD) >= 0.85
    after = left[len(sent) + best + 10:]  # sipp sends nothing after the message
    assert len(after) > 100 and float(np.mean(after < QUIET)) > 0.98


def assert_bot_on_the_right(left: np.ndarray, right: np.ndarray, sent: np.ndarray) -> None:
    """The bot speaks at the start (the notice, over the caller) and answers after the caller
    finished, and none of it is on the left."""
    start = right[:250]  # the first 5 s
    assert float(np.mean(start > LOUD)) > 0.2
    assert float(np.mean(left[:250] > LOUD)) > 0.2  # the caller talked over the notice
    answer = right[len(sent) + 15:]
    assert float(np.mean(answer > LOUD)) > 0.1  # the bot's answer to the message
    bot_alone = (right > LOUD) & (np.arange(len(right)) > len(sent) + 15)
    assert float(np.mean(left[bot_alone[:len(left)]] < QUIET)) > 0.98


def _agreement(expected: np.ndarray, actual: np.ndarray) -> float:
    n = min(len(expected), len(actual))
    loud = expected[:n]
    return float(np.mean(actual[:n][loud])) if loud.any() else 0.0


async def test_retention_removes_an_old_recording_at_start(tmp_path: Path) -> None:
    owner = User("1001")
    config = recording_config(tmp_path, [owner], retention_days=1)
    message = speak("Hello, please call me back.", tmp_path / "message.ul", lead=0.3, tail=1.0)
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon:
            await place_call(config, tmp_path / "call", message, extension="1001",
                             scenario="voicebot_call")
            recorded = started(daemon, "acme")
            saved = await daemon.wait_for_log("call_recording", call_id=recorded)
        path = tmp_path / "recordings" / saved["file"]
        assert path.is_file()
        # The call ended two days ago, as far as the store knows.
        with sqlite3.connect(tmp_path / "store.sqlite3") as db:
            two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
            assert db.execute("UPDATE calls SET ended_at = ? WHERE call_id = ?",
                              (two_days_ago, recorded)).rowcount == 1
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            await daemon.wait_for_log("call_recording_expired", call_id=recorded)
            assert not path.exists()
            headers = await token(http, owner)
            call: dict[str, Any] = (await http.get(f"/api/calls/{recorded}",
                                                   headers=headers)).json()
            assert call["recording"] is None and call["state"] == "ended"
            gone = await http.get(f"/api/calls/{recorded}/recording", headers=headers)
            assert gone.status_code == 404
