"""The logged-in user's calls: live ones, history, and transcripts: /api/calls/*."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, RootModel, WithJsonSchema
from quart import Blueprint, Response, request
from quart_schema import (
    document_response,
    tag_blueprint,
    validate_querystring,
    validate_response,
)

from .. import callstore, inbox
from ..access import may_see
from ..calls import Call, TransferNotPossible
from ..callstore import HistoryCursor, TranscriptEntry
from ..events import CallInfo, CallPhase, CallSummary, utc_now
from ..inbox import InboxState, Mark
from ..recordings import RecordingMissing, recording_path
from .auth_routes import ErrorResponse
from .client import client_fields
from .deps import deps
from .ranges import ByteRange, Unsatisfiable, requested_range
from .security import AuthUser, requires_user

log = structlog.get_logger(__name__)

blueprint = Blueprint("calls", __name__, url_prefix="/api/calls")
tag_blueprint(blueprint, ["calls"])

def _cursor(value: Any) -> HistoryCursor:
    if not isinstance(value, str):
        raise ValueError("give one timestamp or cursor")
    return HistoryCursor.parse(value)


Cursor = Annotated[HistoryCursor, PlainValidator(_cursor), WithJsonSchema({
    "type": "string", "maxLength": 200, "examples": ["2025-01-31T12:00:00Z"],
    "description": "an ISO 8601 timestamp (no offset means UTC), or next_before of a page"})]


class HistoryQuery(BaseModel):
    """Which page of history: calls that started before `before`, at most `limit` of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    before: Cursor | None = None
    limit: int = Field(default=20, ge=1, le=100)
    state: InboxState | None = Field(
        default=None, description="only calls in this state for the user: new, open, handled")


class Party(BaseModel):
    """A caller: number (SIP user or tel number) and display name, if sent."""

    number: str
    name: str | None


class MessageCardModel(BaseModel):
    """An ended AI-handled call's message card, as `MessageCard.wire()` has it."""

    caller_name: str | None
    callback_number: str | None
    callback_requested: bool
    reason: str
    handled_by: Literal["answered_from_knowledge", "message_taken"]
    source: Literal["rules", "llm"]


class RecordingModel(BaseModel):
    """A finished call's recording (stereo WAV: caller left, bot right): where, length, size."""

    url: str
    duration: float
    bytes: int


class CallSummaryModel(BaseModel):
    """A call, live or past, as `CallSummary.wire()` has it; started_at is when it arrived."""

    call_id: str
    tenant: str
    caller: Party
    caller_name: str | None
    callee: str
    callee_extension: str
    is_ai_handled: bool
    started_at: datetime
    created_at: datetime
    state: Literal["ringing", "answered", "confirmed", "ended"]
    answered: bool
    answered_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    duration: float | None
    summary: MessageCardModel | None
    inbox: InboxState = Field(description="the requesting user's own state of the call: new "
                              "until they open it, open until they mark it handled, handled")
    recording: RecordingModel | None = None


class ActiveCalls(RootModel[list[CallSummaryModel]]):
    """The calls in progress that the user may see, oldest first."""


class HistoryResponse(BaseModel):
    """One page of history, newest first; pass next_before as `before` for the next (null: done)."""

    calls: list[CallSummaryModel]
    next_before: str | None


class TranscriptLine(BaseModel):
    """One transcript line: interim lines (final false) are replaced by later ones."""

    speaker: Literal["caller", "bot"]
    text: str
    final: bool
    seq: int
    timestamp: datetime


class TranscriptResponse(BaseModel):
    """A call's transcript so far, in order; ended tells whether more can come."""

    call_id: str
    ended: bool
    entries: list[TranscriptLine]


def _model(summary: CallSummary, state: InboxState) -> CallSummaryModel:
    # The one place the per-user field joins the shared wire form.
    return CallSummaryModel.model_validate({**summary.wire(), "inbox": state})


async def _models(user: AuthUser, summaries: list[CallSummary]) -> list[CallSummaryModel]:
    known = await inbox.states(deps().store, user, (s.info.call_id for s in summaries))
    return [_model(s, known[s.info.call_id]) for s in summaries]


def _active(call: Call) -> CallSummary:
    return CallSummary(info=call.info, phase=CallPhase(call.state.value),
                       answered_at=call.started_at)


def _line(entry: TranscriptEntry) -> TranscriptLine:
    return TranscriptLine(speaker=entry.speaker,  # type: ignore[arg-type]
                          text=entry.text, final=entry.final, seq=entry.seq,
                          timestamp=entry.timestamp)


@blueprint.get("/active")
@requires_user
@validate_response(ActiveCalls, 200)
@document_response(ErrorResponse, 401)
async def active_calls(user: AuthUser) -> ActiveCalls:
    """Calls in progress that the user may see (admins: all of their tenant), oldest first."""
    calls = await _models(user, [_active(c) for c in deps().calls.active_calls()
                                 if may_see(user, c.info)])
    log.info("active_calls_retrieved", extension=user.extension, tenant=user.tenant,
             count=len(calls), progress="realtime")
    return ActiveCalls(calls)


@blueprint.get("")
@requires_user
@validate_querystring(HistoryQuery)
@validate_response(HistoryResponse, 200)
@document_response(ErrorResponse, 400)
@document_response(ErrorResponse, 401)
async def call_history(user: AuthUser, query_args: HistoryQuery) -> HistoryResponse:
    """The user's calls (admins: all of their tenant), newest first, a page at a time."""
    store = deps().store
    # Rows change only when a call arrives, is answered or ends: wait for what is queued so a
    # call that just ended shows as ended.
    await store.flush()
    page = await callstore.call_history(store, user, before=query_args.before,
                                        limit=query_args.limit, state=query_args.state)
    next_before = page.next_before.encode() if page.next_before else None
    return HistoryResponse(calls=await _models(user, page.calls), next_before=next_before)


class InboxCountsResponse(BaseModel):
    """How many of the calls the user may see are new, open and handled for them."""

    new: int
    open: int
    handled: int


@blueprint.get("/counts")
@requires_user
@validate_response(InboxCountsResponse, 200)
@document_response(ErrorResponse, 401)
async def inbox_counts(user: AuthUser) -> InboxCountsResponse:
    """The user's unread (new), open and handled counts over the calls they may see."""
    store = deps().store
    await store.flush()     # a call that just arrived may still be in the writer's queue
    counts = await inbox.counts(store, user)
    return InboxCountsResponse(new=counts.new, open=counts.open, handled=counts.handled)


async def _visible(user: AuthUser, call_id: str, *,
                   refused: str = "call_transcript_forbidden") -> tuple[CallInfo, bool] | None:
    """The call's data and whether it ended, if it exists and the user may see it."""
    api = deps()
    live = api.calls.get(call_id)
    if live is not None:
        info = live.info
    else:
        summary = await callstore.find_call(api.store, api.bus, call_id)
        if summary is None:
            return None
        info = summary.info
    if not may_see(user, info):
        log.warning(refused, call_id=call_id, extension=user.extension,
                    tenant=user.tenant, **client_fields())
        return None
    return info, live is None


@blueprint.get("/<call_id>")
@requires_user
@validate_response(CallSummaryModel, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
async def call(user: AuthUser, call_id: str) -> object:
    """One live or finished call, with its message card once made; 404 alike for unknown and
    other people's calls."""
    api = deps()
    live = api.calls.get(call_id)
    if live is not None:
        summary: CallSummary | None = _active(live)
    else:
        # A call that just ended may still have its card in the writer's queue.
        await api.store.flush()
        summary = await callstore.find_call(api.store, api.bus, call_id)
    if summary is None or not may_see(user, summary.info):
        if summary is not None:
            log.warning("call_forbidden", call_id=call_id, extension=user.extension,
                        tenant=user.tenant, **client_fields())
        return {"error": "not_found", "detail": "no call with this id"}, 404
    states = await inbox.states(api.store, user, [call_id])
    return _model(summary, states[call_id])


@blueprint.get("/<call_id>/transcript")
@requires_user
@validate_response(TranscriptResponse, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
@document_response(ErrorResponse, 500)
async def transcript(user: AuthUser, call_id: str) -> object:
    """The transcript of a live or finished call; 404 alike for unknown and other people's calls."""
    visible = await _visible(user, call_id)
    if visible is None:
        return {"error": "not_found", "detail": "no call with this id"}, 404
    info, ended = visible
    try:
        entries = await callstore.read_transcript(deps().store, deps().bus, info.call_id)
    except ValueError:
        log.exception("call_transcript_unreadable", call_id=call_id)
        return {"error": "internal_error",
                "detail": "the call's history cannot be read; try again later"}, 500
    return TranscriptResponse(call_id=info.call_id, ended=ended,
                              entries=[_line(e) for e in entries])


class TransferResponse(BaseModel):
    """The PBX is being asked to transfer the call to target; the outcome comes on the hub."""

    call_id: str
    target: str


@blueprint.post("/<call_id>/transfer")
@requires_user
@validate_response(TransferResponse, 202)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
@document_response(ErrorResponse, 409)
async def transfer_call(user: AuthUser, call_id: str) -> object:
    """Take this call: the bot says the transfer line, then the PBX is asked (REFER)."""
    # 404 alike for unknown and other people's calls; 409: not in progress, or already moving.
    visible = await _visible(user, call_id, refused="call_transfer_forbidden")
    if visible is None:
        return {"error": "not_found", "detail": "no call with this id"}, 404
    live = deps().calls.get(call_id)
    if live is None:
        return {"error": "not_live", "detail": "the call has ended"}, 409
    try:
        target = deps().calls.transfer(live, requested_by=user.extension)
    except TransferNotPossible as exc:
        return {"error": exc.code, "detail": str(exc)}, 409
    return TransferResponse(call_id=call_id, target=target), 202


class InboxStateResponse(BaseModel):
    """The user's state of the call after the change."""

    call_id: str
    inbox: InboxState


async def _mark(user: AuthUser, call_id: str, action: Mark) -> object:
    """Record the user's mark on a call they may see; 404 alike for unknown and others'."""
    visible = await _visible(user, call_id, refused="call_mark_forbidden")
    if visible is None:
        return {"error": "not_found", "detail": "no call with this id"}, 404
    state = await inbox.mark(deps().store, user, call_id, action, utc_now())
    log.info("call_marked", call_id=call_id, mark=action.value, inbox=state.value,
             extension=user.extension, tenant=user.tenant)
    return InboxStateResponse(call_id=call_id, inbox=state)


@blueprint.post("/<call_id>/opened")
@requires_user
@validate_response(InboxStateResponse, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
async def mark_opened(user: AuthUser, call_id: str) -> object:
    """Mark the call opened by the user (new becomes open; otherwise nothing changes)."""
    return await _mark(user, call_id, Mark.OPENED)


@blueprint.post("/<call_id>/handled")
@requires_user
@validate_response(InboxStateResponse, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
async def mark_handled(user: AuthUser, call_id: str) -> object:
    """Mark the call handled by the user (it also counts as opened); doing it again is no-op."""
    return await _mark(user, call_id, Mark.HANDLED)


@blueprint.delete("/<call_id>/handled")
@requires_user
@validate_response(InboxStateResponse, 200)
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
async def unmark_handled(user: AuthUser, call_id: str) -> object:
    """Undo handled: the call is open again for the user (a new call becomes open)."""
    return await _mark(user, call_id, Mark.UNHANDLED)


# -- recordings (opt-in per tenant) ----------------------------------------------------------

READ_CHUNK = 64 * 1024
NO_RECORDING = {"error": "not_found", "detail": "no recording for this call"}


@blueprint.get("/<call_id>/recording")
@requires_user
@document_response(ErrorResponse, 401)
@document_response(ErrorResponse, 404)
@document_response(ErrorResponse, 416)
async def recording(user: AuthUser, call_id: str) -> object:
    """A finished call's recording as audio/wav (caller left, bot right), with Range requests;
    404 alike for unknown and other people's calls, live calls and calls not recorded."""
    visible = await _visible(user, call_id, refused="call_recording_forbidden")
    if visible is None:
        return {"error": "not_found", "detail": "no call with this id"}, 404
    info, ended = visible
    api = deps()
    if not ended:
        return NO_RECORDING, 404
    await api.store.flush()  # a call that just ended may have its recording in the queue
    name = await callstore.recording_file(api.store, info.call_id)
    if name is None:
        return NO_RECORDING, 404
    try:
        path = recording_path(api.live.current.recordings_dir, name)
        size, mtime = await trio.to_thread.run_sync(_size_and_mtime, path)
    except (RecordingMissing, OSError) as exc:
        log.warning("call_recording_missing", call_id=info.call_id, error=str(exc))
        return NO_RECORDING, 404
    etag = f'"{size:x}-{mtime:x}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    try:
        chosen = requested_range(request.headers.get("Range"), size,
                                 if_range=request.headers.get("If-Range"), etag=etag)
    except Unsatisfiable as exc:
        _log_fetch(user, info, status=416)
        return ({"error": "range_not_satisfiable", "detail": str(exc)}, 416,
                {**headers, "Content-Range": exc.content_range()})
    part = chosen or ByteRange(0, size, size)
    if chosen is not None:
        headers["Content-Range"] = chosen.content_range()
    response = Response(_read(path, part), status=206 if chosen else 200,
                        content_type="audio/wav", headers=headers)
    response.content_length = part.length
    _log_fetch(user, info, status=response.status_code, start=part.start, length=part.length)
    return response


def _size_and_mtime(path: Path) -> tuple[int, int]:
    found = path.stat()
    if not stat.S_ISREG(found.st_mode):
        raise OSError(f"{path} is not a file")
    return found.st_size, found.st_mtime_ns


async def _read(path: Path, part: ByteRange) -> AsyncIterator[bytes]:
    """The bytes of part, a chunk at a time."""
    async with await trio.open_file(path, "rb") as file:
        await file.seek(part.start)
        left = part.length
        while left > 0:
            chunk = await file.read(min(READ_CHUNK, left))
            if not chunk:  # the file shrank (retention removed it): end early
                return
            left -= len(chunk)
            yield chunk


def _log_fetch(user: AuthUser, info: CallInfo, **fields: Any) -> None:
    log.info("call_recording_fetched", call_id=info.call_id, extension=user.extension,
             tenant=user.tenant, **fields, **client_fields())
