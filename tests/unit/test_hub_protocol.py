"""The hub's sans-IO protocol: handshake checks, request parsing, replies, rate limit, wire form."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from voicedashd.config import ConfigError, parse_config
from voicedashd.events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallStarted,
    EndReason,
    Speaker,
    SttTranscript,
    TtsCompleted,
    TtsStarted,
    event_from_record,
    event_types,
)
from voicedashd.hub.connection import WireCache
from voicedashd.hub.protocol import (
    MAX_CLOSE_REASON,
    Auth,
    Ping,
    ProtocolError,
    SubscribeCall,
    TokenBucket,
    UnsubscribeCall,
    allowed_origins,
    bearer_token,
    check_handshake,
    clip_reason,
    parse_message,
    too_slow_reason,
)
from voicedashd.hub.router import Router

ORIGINS = frozenset({"http://127.0.0.1:8480", "https://dash.example.com"})
SECRET = {"VOICEDASHD_JWT_SECRET": "s" * 40}


def config_text(hub: str = "", api: str = "") -> str:
    return "\n".join([
        "[sip]", 'listen = "127.0.0.1:5070"', "[api]", 'listen = "127.0.0.1:8480"', api,
        "[hub]", 'listen = "127.0.0.1:8481"', hub, "[store]", 'path = "db.sqlite3"',
        "[[tenants]]", 'name = "acme"'])


# -- handshake ---------------------------------------------------------------------------


def origin(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"origin", value.encode())]


@pytest.mark.parametrize(("target", "headers", "status", "reason"), [
    ("/ws", origin("http://127.0.0.1:8480"), None, None),
    ("/ws?lang=en", origin("https://dash.example.com"), None, None),
    ("/ws", origin("HTTPS://Dash.Example.com:443"), None, None),      # normalised
    ("/", origin("http://127.0.0.1:8480"), 404, "path"),
    ("/ws/", origin("http://127.0.0.1:8480"), 404, "path"),
    ("/api/ws", origin("http://127.0.0.1:8480"), 404, "path"),
    ("/ws?token=abc", origin("http://127.0.0.1:8480"), 400, "token_in_url"),
    ("/ws?x=1&Access_Token=abc", origin("http://127.0.0.1:8480"), 400, "token_in_url"),
    ("/ws", [], None, None),            # a script or integration: admitted, must authenticate
    ("/ws", [(b"Authorization", b"Bearer t")], None, None),
    ("/ws?token=abc", [], 400, "token_in_url"),
    ("/other", [], 404, "path"),
    ("/ws", origin(""), 403, "origin"),
    ("/ws", origin("null"), 403, "origin"),
    ("/ws", origin("http://evil.example"), 403, "origin"),
    ("/ws", origin("http://127.0.0.1:8481"), 403, "origin"),
    ("/ws", origin("https://127.0.0.1:8480"), 403, "origin"),
])
def test_check_handshake(target: str, headers: list[tuple[bytes, bytes]], status: int | None,
                         reason: str | None) -> None:
    rejection = check_handshake(target, headers, ORIGINS)
    if status is None:
        assert rejection is None
    else:
        assert rejection is not None
        assert (rejection.status, rejection.reason) == (status, reason)
        assert rejection.detail


def test_origins_default_to_the_api_and_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "voicedashd.toml"
    assert allowed_origins(parse_config(config_text(), path=path, environ=SECRET)) == {
        "http://127.0.0.1:8480"}
    listed = parse_config(config_text('origins = ["https://Dash.example.com:443/"]'),
                          path=path, environ=SECRET)
    assert allowed_origins(listed) == {"https://dash.example.com"}
    with pytest.raises(ConfigError) as bad:
        parse_config(config_text('origins = ["dash.example.com"]'), path=path, environ=SECRET)
    assert bad.value.problems[0].startswith("hub.origins: expected an origin")
    with pytest.raises(ConfigError) as bad:
        parse_config(config_text('origins = ["https://dash.example.com/app"]'), path=path,
                     environ=SECRET)
    assert "scheme://host[:port] only" in bad.value.problems[0]


def test_hub_settings_have_defaults_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "voicedashd.toml"
    hub = parse_config(config_text(), path=path, environ=SECRET).hub
    assert (hub.max_subscriptions, hub.queue_size, hub.max_message_size, hub.rate_limit,
            hub.rate_burst, hub.ping_interval, hub.ping_timeout, hub.send_buffer) == (
        10, 256, 65536, 20.0, 40, 20.0, 10.0, 262144)
    tuned = parse_config(config_text('ping_interval = "1s"\nqueue_size = 4'), path=path,
                         environ=SECRET).hub
    assert (tuned.ping_interval, tuned.queue_size) == (1.0, 4)
    for bad in ("queue_size = 0", 'ping_interval = "0s"', "max_message_size = 10"):
        with pytest.raises(ConfigError):
            parse_config(config_text(bad), path=path, environ=SECRET)


@pytest.mark.parametrize(("value", "token"), [
    (b"Bearer abc.def.ghi", "abc.def.ghi"), (b"bearer   abc", "abc"), (b"Basic abc", None),
    (b"Bearer", None), (b"Bearer ", None)])
def test_bearer_token(value: bytes, token: str | None) -> None:
    assert bearer_token([(b"Authorization", value)]) == token
    assert bearer_token([]) is None


# -- client messages ---------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "message"), [
    ('{"type":"auth","token":"t"}', Auth("t")),
    ('{"type":"ping","id":1}', Ping(1)),
    ('{"type":"ping","id":"a"}', Ping("a")),
    ('{"type":"subscribe_call","id":2,"call_id":"c"}', SubscribeCall(2, "c", 0)),
    ('{"type":"subscribe_call","id":2,"call_id":"c","since_seq":null}', SubscribeCall(2, "c")),
    ('{"type":"subscribe_call","id":2,"call_id":"c","since_seq":7,"x":1}',
     SubscribeCall(2, "c", 7)),
    ('{"type":"subscribe_call","id":0,"call_id":"c","since_seq":0}', SubscribeCall(0, "c", 0)),
    ('{"type":"subscribe_call","id":9007199254740991,"call_id":"c",'
     '"since_seq":9007199254740991}', SubscribeCall(2**53 - 1, "c", 2**53 - 1)),
    ('{"type":"unsubscribe_call","id":null,"call_id":"c"}', UnsubscribeCall(None, "c")),
])
def test_parse_valid_messages(frame: str, message: object) -> None:
    assert parse_message(frame) == message


@pytest.mark.parametrize(("frame", "error", "request_id"), [
    (b'{"type":"ping","id":1}', "bad_request", None),
    ("not json", "bad_request", None),
    ("[1]", "bad_request", None),
    ('{"id":3}', "bad_request", 3),
    ('{"type":5,"id":3}', "bad_request", 3),
    ('{"type":"dance","id":3}', "unknown_type", 3),
    ('{"type":"ping"}', "bad_request", None),
    ('{"type":"ping","id":true}', "bad_request", None),
    ('{"type":"ping","id":1.5}', "bad_request", None),
    ('{"type":"ping","id":"' + "x" * 200 + '"}', "bad_request", None),
    ('{"type":"auth"}', "bad_request", None),
    ('{"type":"auth","token":""}', "bad_request", None),
    ('{"type":"subscribe_call","id":4}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":""}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":7}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"' + "c" * 129 + '"}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":-1}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":"3"}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":true}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":false}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":1.5}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":7.0}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":1e400}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":NaN}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":9007199254740992}',
     "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":9223372036854775808}',
     "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":' + "9" * 5000 + "}",
     "bad_request", None),                                  # beyond int() of a JSON number
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":[1]}', "bad_request", 4),
    ('{"type":"subscribe_call","id":4,"call_id":"c","since_seq":{}}', "bad_request", 4),
    ('{"type":"ping","id":-1}', "bad_request", None),
    ('{"type":"ping","id":9007199254740992}', "bad_request", None),
    ('{"type":"ping","id":9223372036854775808}', "bad_request", None),
    ('{"type":"ping","id":[1]}', "bad_request", None),
    ('{"type":"unsubscribe_call","id":5}', "bad_request", 5),
])
def test_parse_invalid_messages(frame: str | bytes, error: str, request_id: object) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_message(frame)
    assert (raised.value.error, raised.value.request_id) == (error, request_id)
    assert raised.value.detail


# -- server messages ---------------------------------------------------------------------


def test_too_slow_reason_fits_a_close_frame() -> None:
    short = too_slow_reason({"a" * 24: 17})
    assert short == 'too slow; last delivered: {"' + "a" * 24 + '":17}'
    many = too_slow_reason({f"{n:024x}": n for n in range(10)})
    assert many == "too slow; last delivered: see the closing message"
    assert len(short.encode()) <= MAX_CLOSE_REASON


def test_clip_reason_keeps_whole_characters() -> None:
    assert clip_reason("short") == "short"
    clipped = clip_reason("é" * 100)
    assert len(clipped.encode()) <= MAX_CLOSE_REASON
    assert clipped.endswith("...")
    clipped.encode().decode()


# -- rate limit --------------------------------------------------------------------------


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=5, burst=10, now=100.0)
    assert [bucket.allow(100.0) for _ in range(11)] == [True] * 10 + [False]
    assert bucket.allow(100.1) is False          # half a token
    assert bucket.allow(100.2) is True           # one token after 0.2 s at 5/s
    assert bucket.allow(100.2) is False
    assert sum(bucket.allow(200.0) for _ in range(20)) == 10    # refills only up to the burst
    assert bucket.allow(50.0) is False           # a clock going back never adds tokens


# -- the wire form survives the store ----------------------------------------------------


TS = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
EVENTS: list[CallEvent] = [
    CallStarted(call_id="c", seq=1, ts=TS, tenant="acme", caller="555", caller_name="Ann",
                callee="1001", callee_extension="1001", is_ai_handled=True, started_at=TS),
    CallStarted(call_id="c", seq=1, ts=TS, tenant="acme", caller="555", caller_name=None,
                callee="1001", callee_extension="1001", is_ai_handled=False, started_at=TS),
    SttTranscript(call_id="c", seq=2, ts=TS, text="hello", is_final=False),
    SttTranscript(call_id="c", seq=3, ts=TS, text="hi", is_final=True, speaker=Speaker.BOT),
    TtsStarted(call_id="c", seq=4, ts=TS, text="Good morning"),
    TtsCompleted(call_id="c", seq=5, ts=TS),
    CallEnded(call_id="c", seq=6, ts=TS, reason=EndReason.CALLER_HANGUP, duration=12.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.name)
def test_stored_events_rebuild_the_same_wire_form(event: CallEvent) -> None:
    wire = event.to_wire()
    stored: dict[str, Any] = json.loads(json.dumps(event.data()))     # as the store keeps it
    rebuilt = event_from_record(event.call_id, event.seq, event.name, event.ts.isoformat(),
                                stored)
    assert rebuilt == event
    assert rebuilt.to_wire() == wire


def test_every_event_class_is_known_by_name() -> None:
    assert {"call_started", "call_ended", "stt_transcript", "tts_started",
            "tts_completed"} <= set(event_types())
    with pytest.raises(ValueError, match="unknown event name"):
        event_from_record("c", 1, "no_such_event", TS.isoformat(), {})


def test_wire_cache_encodes_once_and_stays_bounded() -> None:
    cache = WireCache(size=3)
    first = cache.frame(EVENTS[2])
    assert json.loads(first) == EVENTS[2].to_wire()
    assert cache.frame(EVENTS[2]) is first
    for event in EVENTS[3:]:
        cache.frame(event)
    assert len(cache._frames) == 3


# -- routing -----------------------------------------------------------------------------


class Recorder:
    """A connection stand-in that records what the router hands it."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int]] = []

    def deliver(self, info: CallInfo, event: CallEvent) -> None:
        self.got.append((event.name, event.seq))


def test_router_asks_only_followers_and_the_lobby() -> None:
    info = CallInfo(call_id="c", tenant="acme", caller="555", caller_name=None, callee="1001",
                    callee_extension="1001", is_ai_handled=True, created_at=TS)
    owner, other, admin, foreign_admin, follower = (Recorder() for _ in range(5))
    router = Router()
    router.join(owner, "acme", "1001", admin=False)
    router.join(other, "acme", "1002", admin=False)
    router.join(admin, "acme", "1009", admin=True)
    router.join(foreign_admin, "globex", "1009", admin=True)
    router.join(follower, "acme", "1001", admin=False)
    router.follow(follower, "c")
    for event in EVENTS[:1] + EVENTS[2:]:
        router.publish(info, event)
    lobby = [("call_started", 1), ("call_ended", 6)]
    assert owner.got == lobby and admin.got == lobby
    assert other.got == [] and foreign_admin.got == []
    assert follower.got == [(e.name, e.seq) for e in EVENTS[:1] + EVENTS[2:]]   # once each
    router.unfollow(follower, "c")
    router.leave(owner, "acme", "1001")
    router.publish(info, EVENTS[-1])
    assert follower.got[-1] == ("call_ended", 6) and len(owner.got) == 2
    assert router.counts() == (0, 4)
