"""The transfer events' wire form, and that the store's form reads back the same."""

from __future__ import annotations

from datetime import UTC, datetime

from voicedashd.calls import end_reason
from voicedashd.events import (
    CallEnded,
    EndReason,
    TransferFailed,
    TransferProgressed,
    TransferStarted,
    event_from_record,
)
from voicedashd.sip.dialog import TRANSFERRED

TS = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)


def test_transfer_events_wire_and_read_back() -> None:
    events = [
        TransferStarted(call_id="c", seq=3, ts=TS, target="sip:1001@192.0.2.10",
                        requested_by="1001"),
        TransferFailed(call_id="c", seq=4, ts=TS, reason="REFER refused: 603 Decline",
                       status=603),
        TransferFailed(call_id="c", seq=5, ts=TS, reason="no final NOTIFY in time"),
        TransferProgressed(call_id="c", seq=6, ts=TS, status=180, reason="Ringing"),
        CallEnded(call_id="c", seq=7, ts=TS, reason=EndReason.TRANSFERRED, duration=9.5),
    ]
    wires = [e.to_wire() for e in events]
    assert [w["event"] for w in wires] == ["transfer_started", "transfer_failed",
                                           "transfer_failed", "transfer_progress", "call_ended"]
    assert wires[0]["data"] == {"target": "sip:1001@192.0.2.10", "requested_by": "1001"}
    assert wires[2]["data"] == {"reason": "no final NOTIFY in time", "status": None}
    assert wires[3]["data"] == {"status": 180, "reason": "Ringing"}
    assert wires[4]["data"]["reason"] == "transferred"
    for event, wire in zip(events, wires, strict=True):
        assert event_from_record("c", wire["seq"], wire["event"], wire["ts"],
                                 wire["data"]) == event


def test_the_dialogs_transferred_is_the_calls_end_reason() -> None:
    assert end_reason(TRANSFERRED) is EndReason.TRANSFERRED
