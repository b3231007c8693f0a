"""Typed call events and their one wire form (JSON-ready dicts)."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar


class Speaker(enum.StrEnum):
    """Who said a transcript line."""

    CALLER = "caller"
    BOT = "bot"


class EndReason(enum.StrEnum):
    """Why a call ended."""

    CALLER_HANGUP = "caller_hangup"
    BOT_HANGUP = "bot_hangup"
    CANCELLED = "cancelled"
    ACK_TIMEOUT = "ack_timeout"
    MEDIA_TIMEOUT = "media_timeout"
    SHUTDOWN = "shutdown"
    ERROR = "error"
    TRANSFERRED = "transferred"  # the PBX took the call elsewhere at the owner's request
    INTERRUPTED = "interrupted"  # the process died (kill -9, power loss); closed at next start


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


# C0 controls, DEL, C1 controls, and the bidirectional marks, embeddings, overrides and
# isolates: a caller chooses their display name, and these would let it recolour a terminal,
# move its cursor, or show a number reversed on a dashboard.
_UNPRINTABLE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F,
                *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_LINE_BREAKS = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0x2028, 0x2029]
_PRINTABLE = str.maketrans({**dict.fromkeys(_UNPRINTABLE), **dict.fromkeys(_LINE_BREAKS, " ")})


_PRINTABLE_LINES = str.maketrans({**dict.fromkeys(_UNPRINTABLE), **dict.fromkeys(
    [b for b in _LINE_BREAKS if b != 0x0A], " "), 0x0A: "\n"})


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """Text without control characters (C0, DEL, C1) or bidi controls; breaks become spaces."""
    return text.translate(_PRINTABLE_LINES if keep_newlines else _PRINTABLE)


def _clean_parties(event: CallInfo | CallStarted) -> None:
    """Make who calls whom printable before it reaches events, logs, the store or a screen."""
    for name in ("caller", "callee", "callee_extension"):
        object.__setattr__(event, name, printable(getattr(event, name)))
    if event.caller_name is not None:
        object.__setattr__(event, "caller_name", printable(event.caller_name).strip() or None)


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who a call is for: the data every authorization decision is made from."""

    call_id: str
    tenant: str
    caller: str
    caller_name: str | None
    callee: str
    callee_extension: str
    is_ai_handled: bool
    created_at: datetime

    def __post_init__(self) -> None:
        _clean_parties(self)


class CallPhase(enum.StrEnum):
    """How far a call got, as clients see it."""

    RINGING = "ringing"
    ANSWERED = "answered"       # our 200 OK is sent, the caller's ACK not yet here
    CONFIRMED = "confirmed"
    ENDED = "ended"


class HandledBy(enum.StrEnum):
    """How the bot dealt with a call: it answered from its knowledge, or took a message."""

    ANSWERED_FROM_KNOWLEDGE = "answered_from_knowledge"
    MESSAGE_TAKEN = "message_taken"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageCard:
    """What an AI-handled call was about, for its owner: who called, where to call back, why."""

    caller_name: str | None
    callback_number: str | None
    callback_requested: bool
    reason: str
    handled_by: HandledBy
    source: str = "rules"   # "rules" (offline) or "llm"

    def __post_init__(self) -> None:
        # Recognised speech or an LLM's reply: shown on a page, logged, stored.
        name = printable(self.caller_name).strip() if self.caller_name else None
        object.__setattr__(self, "caller_name", name or None)
        object.__setattr__(self, "reason", printable(self.reason).strip())
        object.__setattr__(self, "handled_by", HandledBy(self.handled_by))

    def wire(self) -> dict[str, Any]:
        """Return the card's wire form (the `summary` of a call, the call_summary event's data)."""
        return {"caller_name": self.caller_name, "callback_number": self.callback_number,
                "callback_requested": self.callback_requested, "reason": self.reason,
                "handled_by": self.handled_by.value, "source": self.source}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> MessageCard:
        """Rebuild a card from its wire form (as stored)."""
        return cls(caller_name=data.get("caller_name"),
                   callback_number=data.get("callback_number"),
                   callback_requested=bool(data.get("callback_requested")),
                   reason=str(data.get("reason") or ""),
                   handled_by=HandledBy(data["handled_by"]),
                   source=str(data.get("source") or "rules"))


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """A call's completed recording as clients see it: where to fetch it, length, size."""

    duration: float
    bytes: int

    def wire(self, call_id: str) -> dict[str, Any]:
        """The `recording` of a call's wire form."""
        return {"url": f"/api/calls/{call_id}/recording", "duration": self.duration,
                "bytes": self.bytes}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSummary:
    """One call as every client sees it (REST lists, the hub's subscribe reply)."""

    info: CallInfo
    phase: CallPhase
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    duration: float | None = None
    card: MessageCard | None = None
    recording: RecordingInfo | None = None

    def wire(self) -> dict[str, Any]:
        """Return the summary's wire form: the only place it is built."""
        info = self.info
        return {
            "call_id": info.call_id,
            "tenant": info.tenant,
            "caller": {"number": info.caller, "name": info.caller_name},
            # Flat twin of caller.name: hub clients read it (docs/protocol.md).
            "caller_name": info.caller_name,
            "callee": info.callee,
            "callee_extension": info.callee_extension,
            "is_ai_handled": info.is_ai_handled,
            # started_at is when the call arrived, as the history pages by it; created_at is
            # the same instant under the name the hub's subscribe reply has always used.
            "started_at": info.created_at.isoformat(),
            "created_at": info.created_at.isoformat(),
            "state": self.phase.value,
            "answered": self.answered_at is not None,
            "answered_at": _jsonable(self.answered_at),
            "ended_at": _jsonable(self.ended_at),
            "end_reason": self.end_reason,
            "duration": self.duration,
            # The message card, once the call has ended and been summarised (else null).
            "summary": self.card.wire() if self.card else None,
            # The call's recording, once complete (recording tenants only; else null).
            "recording": self.recording.wire(info.call_id) if self.recording else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent:
    """Base of every event: which call, its per-call sequence number, and when (UTC)."""

    name: ClassVar[str] = "call_event"
    call_id: str
    seq: int
    ts: datetime

    def data(self) -> dict[str, Any]:
        """Return the event-specific fields as JSON-ready values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("call_id", "seq", "ts"):
                continue
            out[f.name] = _jsonable(getattr(self, f.name))
        return out

    def to_wire(self) -> dict[str, Any]:
        """Return the event's wire form: the only place it is built."""
        return {
            "type": "event",
            "event": self.name,
            "call_id": self.call_id,
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "data": self.data(),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(CallEvent):
    """The dialog was confirmed by ACK: the call is live."""

    name: ClassVar[str] = "call_started"
    tenant: str
    caller: str
    caller_name: str | None
    callee: str
    callee_extension: str
    is_ai_handled: bool
    started_at: datetime

    def __post_init__(self) -> None:
        _clean_parties(self)


def call_started_fields(info: CallInfo, started_at: datetime) -> dict[str, Any]:
    """The fields of a call's CallStarted event, from its CallInfo: `bus.emit(CallStarted, ...)`."""
    return {"tenant": info.tenant, "caller": info.caller, "caller_name": info.caller_name,
            "callee": info.callee, "callee_extension": info.callee_extension,
            "is_ai_handled": info.is_ai_handled, "started_at": started_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded(CallEvent):
    """The call is over."""

    name: ClassVar[str] = "call_ended"
    reason: EndReason
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SttTranscript(CallEvent):
    """Words recognised from a speaker, interim or final."""

    name: ClassVar[str] = "stt_transcript"
    text: str
    is_final: bool
    speaker: Speaker = Speaker.CALLER


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsStarted(CallEvent):
    """The bot started saying a sentence."""

    name: ClassVar[str] = "tts_started"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsCompleted(CallEvent):
    """The bot finished saying what it started."""

    name: ClassVar[str] = "tts_completed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Dtmf(CallEvent):
    """The caller pressed a key (an RFC 4733 telephone-event); duration in seconds."""

    name: ClassVar[str] = "dtmf"
    digit: str
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSummarized(CallEvent):
    """An ended AI-handled call's message card (its fields are MessageCard's)."""

    name: ClassVar[str] = "call_summary"
    caller_name: str | None
    callback_number: str | None
    callback_requested: bool
    reason: str
    handled_by: HandledBy
    source: str = "rules"

    def card(self) -> MessageCard:
        """The message card this event carries."""
        return MessageCard(caller_name=self.caller_name, callback_number=self.callback_number,
                           callback_requested=self.callback_requested, reason=self.reason,
                           handled_by=self.handled_by, source=self.source)


def call_summarized_fields(card: MessageCard) -> dict[str, Any]:
    """The fields of a CallSummarized event, from a card: `bus.emit(CallSummarized, ...)`."""
    return {"caller_name": card.caller_name, "callback_number": card.callback_number,
            "callback_requested": card.callback_requested, "reason": card.reason,
            "handled_by": card.handled_by, "source": card.source}


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferStarted(CallEvent):
    """Someone who may see the call asked to take it: the PBX is asked to transfer it."""

    name: ClassVar[str] = "transfer_started"
    target: str  # the Refer-To URI
    requested_by: str  # the extension of who asked


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProgressed(CallEvent):
    """The PBX reports on the transfer: it accepted the REFER (2xx) or is trying (1xx)."""

    name: ClassVar[str] = "transfer_progress"
    status: int
    reason: str  # the PBX's phrase, e.g. "Accepted", "Trying", "Ringing"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFailed(CallEvent):
    """The transfer did not happen (refused, failed, timed out): the bot carries on."""

    name: ClassVar[str] = "transfer_failed"
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecorded(CallEvent):
    """A recording tenant's call was kept: a stereo WAV (caller left, bot right), complete."""

    name: ClassVar[str] = "call_recording"
    file: str  # relative to [recordings] dir; the API never takes a path from a request
    duration: float  # seconds
    bytes: int

    def info(self) -> RecordingInfo:
        """The recording as a call's summary shows it."""
        return RecordingInfo(duration=self.duration, bytes=self.bytes)


def event_types() -> dict[str, type[CallEvent]]:
    """Return every concrete event class (also those defined outside this module) by name."""
    found: dict[str, type[CallEvent]] = {}
    pending: list[type[CallEvent]] = [CallEvent]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            found[sub.name] = sub
            pending.append(sub)
    return found


def event_from_record(call_id: str, seq: int, name: str, ts: str,
                      data: dict[str, Any]) -> CallEvent:
    """Rebuild a typed event from its stored form (inverse of `data()`); ValueError if unknown."""
    cls = event_types().get(name)
    if cls is None:
        raise ValueError(f"unknown event name {name!r}")
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("call_id", "seq", "ts") or f.name not in data:
            continue
        fields[f.name] = _from_json(hints[f.name], data[f.name])
    return cls(call_id=call_id, seq=seq, ts=datetime.fromisoformat(ts), **fields)


def _from_json(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is datetime:
            return datetime.fromisoformat(value)
        if isinstance(option, type) and issubclass(option, enum.Enum):
            return option(value)
    return value
