"""Tenant call recordings: the stereo mixer, the session's file, Range decisions, retention."""

from __future__ import annotations

import os
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from tests.config_text import MINIMAL
from tests.media_peer import session_with_peer
from voicedashd.api.ranges import ByteRange, Unsatisfiable, requested_range
from voicedashd.config import ConfigError, parse_config
from voicedashd.media.callrecord import StereoMixer, recording_name
from voicedashd.media.g711 import PCMU
from voicedashd.media.rtp import RtpPacket
from voicedashd.media.session import SessionSettings
from voicedashd.metrics import Metrics
from voicedashd.recordings import (
    ORPHANED_TENANT_DAYS,
    RecordingMissing,
    StoredRecording,
    expired,
    recording_path,
    remove_stale_partials,
    sweep,
)
from voicedashd.store import open_store

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz


def _frame(value: int, n: int = FRAME) -> np.ndarray:
    return np.full(n, value, dtype=np.int16)


def _split(stereo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return stereo[0::2], stereo[1::2]


# -- the mixer ------------------------------------------------------------------------------

def test_each_tick_is_one_frame_caller_left_bot_right() -> None:
    mixer = StereoMixer(RATE)
    mixer.inbound(_frame(1000))
    mixer.outbound(_frame(2000, 2 * FRAME))
    left, right = _split(mixer.tick(bot_sent=True, queued=0.02))
    assert len(left) == len(right) == FRAME
    assert set(left) == {1000} and set(right) == {2000}
    # The next tick: nothing arrived from the caller; the bot's second frame goes out.
    left, right = _split(mixer.tick(bot_sent=True, queued=0.0))
    assert set(left) == {0} and set(right) == {2000}


def test_a_tick_that_sent_no_speech_records_the_bot_as_silence_and_keeps_its_queue() -> None:
    """On hold, or before a source is learnt, the bot's speech waits in the sender: later."""
    mixer = StereoMixer(RATE)
    mixer.outbound(_frame(2000))
    _, right = _split(mixer.tick(bot_sent=False, queued=0.02))
    assert set(right) == {0}
    _, right = _split(mixer.tick(bot_sent=True, queued=0.0))
    assert set(right) == {2000}


def test_a_flush_drops_the_bots_queued_speech_from_the_recording_too() -> None:
    mixer = StereoMixer(RATE)
    mixer.outbound(_frame(2000, 5 * FRAME))
    mixer.flush_outbound()
    _, right = _split(mixer.tick(bot_sent=True, queued=0.0))
    assert set(right) == {0}


def test_speech_the_sender_no_longer_holds_is_trimmed_so_the_sides_stay_aligned() -> None:
    """More queued than the sender holds plus the resampler's slack (40 ms) never plays: the
    oldest goes."""
    mixer = StereoMixer(RATE)
    mixer.outbound(np.concatenate([_frame(1, 10 * FRAME), _frame(2, 2 * FRAME)]))
    # The sender holds one frame after this tick, not eleven: one frame plus 40 ms are kept.
    mixer.tick(bot_sent=True, queued=0.02)
    rights = [_split(mixer.tick(bot_sent=True, queued=0.0))[1] for _ in range(4)]
    assert [sorted(set(int(v) for v in right)) for right in rights] == [[1], [2], [2], [0]]


def test_a_burst_from_the_caller_is_kept_for_the_next_ticks_but_never_beyond_the_cap() -> None:
    mixer = StereoMixer(RATE)
    for value in range(1, 4):  # three frames released by one tick
        mixer.inbound(_frame(value))
    lefts = [_split(mixer.tick(bot_sent=False, queued=0))[0] for _ in range(4)]
    assert [int(left[0]) for left in lefts] == [1, 2, 3, 0]
    for value in range(1, 21):  # 400 ms at once: only the newest 200 ms is kept
        mixer.inbound(_frame(value))
    firsts = [int(_split(mixer.tick(bot_sent=False, queued=0))[0][0]) for _ in range(11)]
    assert firsts == [*range(11, 21), 0]


def test_skipped_ticks_are_silence_on_both_sides() -> None:
    mixer = StereoMixer(RATE)
    assert len(mixer.silence(3)) == 2 * 3 * FRAME and not mixer.silence(3).any()


def test_recording_names_are_a_day_folder_and_the_call_id() -> None:
    when = datetime(2026, 12, 4, 23, 59, tzinfo=UTC)
    assert recording_name("ab12cd", when) == "2026-12-04/ab12cd.wav"
    with pytest.raises(ValueError, match="alphanumeric"):
        recording_name("../etc", when)


def test_a_stored_name_never_leaves_the_recordings_folder(tmp_path: Path) -> None:
    assert recording_path(tmp_path, "2026-12-04/a.wav") == tmp_path.resolve() / "2026-12-04/a.wav"
    for name in ("../a.wav", "/etc/passwd", "", "x/../../a.wav"):
        with pytest.raises(RecordingMissing):
            recording_path(tmp_path, name)


# -- a session's stereo file (real clock: the writer runs in a worker thread) -----------------

def _rtp(seq: int, payload: bytes) -> bytes:
    return RtpPacket(payload_type=0, sequence=seq, timestamp=seq * 160, ssrc=7,
                     payload=payload).to_bytes()


def _tone(seconds: float, rate: int, level: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


async def test_the_session_writes_both_sides_in_step_into_one_stereo_file(tmp_path: Path) -> None:
    """The caller speaks 0-1 s (left), the bot 1.5-2 s (right); 3 s in all."""
    final = tmp_path / "day" / "call.wav"
    settings = SessionSettings(timeout=60, call_record_to=final)
    loud = PCMU.encode(_tone(0.02, 8000))
    quiet = PCMU.encode(np.zeros(160, dtype=np.int16))
    with trio.fail_after(30), capture_logs() as logs:
        async with session_with_peer(settings) as (session, peer, media):
            assert session.records_call
            start = trio.current_time()
            for seq in range(150):  # 3 s of caller RTP: loud for the first second
                if seq == 75:
                    await session.send_pcm(_tone(0.5, RATE), last=True)
                await peer.sendto(_rtp(seq, loud if seq < 50 else quiet),
                                  ("127.0.0.1", media.port))
                await trio.sleep_until(start + (seq + 1) * 0.02)
            assert not final.exists()  # written under .part until complete
    saved = session.call_recording
    assert saved is not None and saved.path == final
    assert not final.with_name("call.wav.part").exists()
    with wave.open(str(final), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        frames = wav.getnframes()
        data = np.frombuffer(wav.readframes(frames), dtype="<i2")
    assert saved.bytes == final.stat().st_size and abs(saved.seconds - frames / RATE) < 0.001
    assert 2.9 <= frames / RATE <= 3.3
    left, right = data[0::2], data[1::2]

    def level(channel: np.ndarray, start: float, end: float) -> float:
        return _rms(channel[round(start * RATE):round(end * RATE)])

    assert level(left, 0.2, 0.9) > 2000 and level(left, 1.3, 2.8) < 100
    assert level(right, 1.6, 1.9) > 2000
    assert level(right, 0.0, 1.4) < 100 and level(right, 2.2, 2.9) < 100
    # Aligned: the caller's speech starts within the jitter buffer's delay plus a tick.
    first_loud = next(i for i in range(0, len(left), FRAME) if _rms(left[i:i + FRAME]) > 1000)
    assert first_loud / RATE <= 0.15
    first_bot = next(i for i in range(0, len(right), FRAME) if _rms(right[i:i + FRAME]) > 1000)
    assert 1.45 <= first_bot / RATE <= 1.65
    assert [e["channels"] for e in logs if e["event"] == "media_recording_saved"] == [2]


async def test_a_call_recording_the_disk_refuses_ends_the_recording_not_the_call(
        tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the day folder should be")
    settings = SessionSettings(timeout=60, call_record_to=blocked / "call.wav")
    with trio.fail_after(30), capture_logs() as logs:
        async with session_with_peer(settings) as (session, peer, media):
            for seq in range(60):
                await peer.sendto(_rtp(seq, b"\xff" * 160), ("127.0.0.1", media.port))
                await trio.sleep(0.02)
    assert session.error is None and session.call_recording is None
    assert [e["event"] for e in logs if e["event"].startswith("media_recording")] == [
        "media_recording_failed"]


# -- Range requests -------------------------------------------------------------------------

def test_a_byte_range_is_sent_as_asked_and_clamped_to_the_file() -> None:
    assert requested_range("bytes=0-99", 1000) == ByteRange(0, 100, 1000)
    assert ByteRange(0, 100, 1000).content_range() == "bytes 0-99/1000"
    assert requested_range("bytes=900-5000", 1000) == ByteRange(900, 1000, 1000)
    assert requested_range("bytes=950-", 1000) == ByteRange(950, 1000, 1000)


def test_a_suffix_range_is_the_end_of_the_file_or_all_of_a_shorter_one() -> None:
    assert requested_range("bytes=-100", 1000) == ByteRange(900, 1000, 1000)
    assert requested_range("bytes=-5000", 1000) == ByteRange(0, 1000, 1000)


def test_a_range_beyond_the_file_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable) as raised:
        requested_range("bytes=1000-", 1000)
    assert raised.value.content_range() == "bytes */1000"
    with pytest.raises(Unsatisfiable):
        requested_range("bytes=5000-6000", 1000)


@pytest.mark.parametrize("header", [None, "", "bytes=0-1,5-6", "items=0-5", "bytes=x-y",
                                    "bytes=5-1"])
def test_no_usable_range_means_the_whole_file(header: str | None) -> None:
    assert requested_range(header, 1000) is None


def test_an_if_range_for_another_version_means_the_whole_file() -> None:
    assert requested_range("bytes=0-9", 1000, if_range='"old"', etag='"new"') is None
    assert requested_range("bytes=0-9", 1000, if_range='"new"', etag='"new"') == ByteRange(
        0, 10, 1000)


# -- retention ------------------------------------------------------------------------------

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _stored(call_id: str, tenant: str, days_ago: float) -> StoredRecording:
    return StoredRecording(call_id, tenant, f"x/{call_id}.wav", NOW - timedelta(days=days_ago))


def test_recordings_past_their_tenants_retention_are_due_oldest_first() -> None:
    rows = [_stored("a1", "acme", 8), _stored("a2", "acme", 6.9), _stored("g1", "globex", 40),
            _stored("g2", "globex", 29), _stored("a3", "acme", 30)]
    due = expired(rows, {"acme": 7, "globex": 30}, NOW)
    assert [r.call_id for r in due] == ["g1", "a3", "a1"]


def test_a_tenant_no_longer_configured_keeps_its_recordings_for_the_default_time() -> None:
    rows = [_stored("o1", "gone", ORPHANED_TENANT_DAYS + 1), _stored("o2", "gone", 1)]
    assert [r.call_id for r in expired(rows, {"acme": 1}, NOW)] == ["o1"]


def test_a_pass_takes_at_most_its_limit_the_oldest() -> None:
    rows = [_stored(f"c{i}", "acme", 10 + i) for i in range(10)]
    assert [r.call_id for r in expired(rows, {"acme": 1}, NOW, limit=3)] == ["c9", "c8", "c7"]


def test_the_clock_moving_on_makes_a_recording_due() -> None:
    rows = [_stored("a", "acme", 0)]
    assert expired(rows, {"acme": 2}, NOW + timedelta(days=1, hours=23)) == []
    assert expired(rows, {"acme": 2}, NOW + timedelta(days=2, seconds=1)) == rows


async def test_a_sweep_deletes_due_files_and_clears_their_rows_only(tmp_path: Path) -> None:
    text = MINIMAL.replace('name = "acme"', 'name = "acme"\nrecord = true\nretention_days = 7')
    config = parse_config(text + '[recordings]\ndir = "rec"\n', path=tmp_path / "v.toml",
                          environ={"VOICEDASHD_JWT_SECRET": "s" * 40})
    base = config.recordings_dir
    assert base == tmp_path / "rec"
    ages = {"old": 8.0, "new": 6.0}
    for call_id in ages:
        (base / "d").mkdir(parents=True, exist_ok=True)
        (base / "d" / f"{call_id}.wav").write_bytes(b"RIFF")
    async with open_store(tmp_path / "s.sqlite3", Metrics()) as store:
        def insert(conn):  # type: ignore[no-untyped-def]
            for call_id, days in ages.items():
                ended = (NOW - timedelta(days=days)).isoformat()
                conn.execute("INSERT INTO calls (call_id, tenant, caller, callee,"
                             " callee_extension, is_ai_handled, started_at, ended_at,"
                             " recording, recording_duration, recording_bytes)"
                             " VALUES (?, 'acme', '1', '2', '2', 1, ?, ?, ?, 1.0, 4)",
                             (call_id, ended, ended, f"d/{call_id}.wav"))
        await store.run(insert)
        with capture_logs() as logs:
            assert await sweep(store, config, NOW) == 1
            assert await sweep(store, config, NOW) == 0  # nothing left to do
        rows = await store.call_rows("SELECT call_id, recording, recording_bytes FROM calls"
                                     " ORDER BY call_id", ())
    assert rows == [{"call_id": "new", "recording": "d/new.wav", "recording_bytes": 4},
                    {"call_id": "old", "recording": None, "recording_bytes": None}]
    assert not (base / "d" / "old.wav").exists() and (base / "d" / "new.wav").exists()
    assert [e["call_id"] for e in logs if e["event"] == "call_recording_expired"] == ["old"]


# -- config ---------------------------------------------------------------------------------

def _config(tmp_path: Path, tenant: str = "", extra: str = "") -> object:
    text = MINIMAL.replace('name = "acme"', f'name = "acme"\n{tenant}') + extra
    return parse_config(text, path=tmp_path / "v.toml",
                        environ={"VOICEDASHD_JWT_SECRET": "s" * 40})


def test_recording_is_off_by_default_and_lives_beside_the_database(tmp_path: Path) -> None:
    config = _config(tmp_path)
    tenant = config.tenants[0]  # type: ignore[attr-defined]
    assert (tenant.record, tenant.retention_days) == (False, 30)
    assert tenant.record_notice == "This call is recorded."
    store = config.store.path  # type: ignore[attr-defined]
    assert config.recordings_dir == store.parent / "recordings"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("tenant", "key"), [
    ("retention_days = 0", "tenants[0].retention_days"),
    ('record_notice = "  "', "tenants[0].record_notice"),
    ('record_notice = "Recorded for {nobody}."', "tenants[0].record_notice"),
    ('record = "maybe"', "tenants[0].record"),
])
def test_bad_recording_settings_name_their_key(tmp_path: Path, tenant: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _config(tmp_path, tenant)
    assert raised.value.problems[0].startswith(f"{key}: "), raised.value.problems


def test_only_stale_partial_files_are_removed(tmp_path: Path) -> None:
    """A killed process's .part files go after a day; a running call's, and whole files, stay."""
    day = tmp_path / "2026-12-03"
    day.mkdir()
    stale, fresh, whole = day / "a.wav.part", day / "b.wav.part", day / "c.wav"
    for path in (stale, fresh, whole):
        path.write_bytes(b"RIFF")
    old = (NOW - timedelta(days=1, minutes=1)).timestamp()
    os.utime(stale, (old, old))
    os.utime(whole, (old, old))
    recent = (NOW - timedelta(hours=23)).timestamp()
    os.utime(fresh, (recent, recent))
    assert remove_stale_partials(tmp_path, NOW) == 1
    assert not stale.exists() and fresh.exists() and whole.exists()
    assert remove_stale_partials(tmp_path / "missing", NOW) == 0
