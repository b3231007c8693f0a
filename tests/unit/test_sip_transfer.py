"""Our REFER in a confirmed dialog and the NOTIFYs that follow it (RFC 3515), fake clock."""

from __future__ import annotations

from voicedashd.sip.dialog import (
    TRANSFERRED,
    Dialog,
    DialogState,
    Ended,
    Respond,
    SendRequest,
    TransferDone,
    TransferProgress,
    sipfrag_status,
)
from voicedashd.sip.fields import cseq_of, tag_of
from voicedashd.sip.message import Request, Response
from voicedashd.sip.parser import make_response, parse_message, serialize

from .test_sip_dialog import confirmed, in_dialog, new_dialog

TARGET = "sip:1001@192.0.2.10"


def refer(dialog: Dialog, now: float = 1.0, timeout: float = 30.0) -> Request:
    actions = dialog.refer(TARGET, now, timeout=timeout)
    assert len(actions) == 1 and isinstance(actions[0], SendRequest)
    return actions[0].request


def answer(request: Request, status: int, phrase: str) -> Response:
    return make_response(request, status, phrase)


def notify(dialog: Dialog, cseq: int, frag: str | None, *, state: str = "active;expires=60",
           event: str = "refer") -> Request:
    body = f"SIP/2.0 {frag}\r\n" if frag is not None else ""
    request = in_dialog(dialog, "NOTIFY", cseq=cseq, branch=f"z9hG4bKn{cseq}")
    request.headers.items += [("Event", event), ("Subscription-State", state)]
    if body:
        request.headers.items.append(("Content-Type", "message/sipfrag;version=2.0"))
    return Request(request.method, request.uri, request.headers, body.encode())


def test_refer_is_an_in_dialog_request_naming_the_target() -> None:
    dialog = confirmed()
    request = refer(dialog)
    headers = request.headers
    assert request.method == "REFER" and request.uri == "sip:alice@192.0.2.10:5060"
    assert headers.get("Refer-To") == f"<{TARGET}>"
    assert tag_of(headers.get("From")) == dialog.local_tag
    assert tag_of(headers.get("To")) == "from1" and headers.get("Call-ID") == "c1"
    assert headers.get("Contact") == "<sip:127.0.0.1:5060>"
    number, method = cseq_of(headers)
    assert method == "REFER"
    # Our next request (the BYE) counts on from the REFER.
    bye = dialog.hang_up("bot_hangup", 2.0)[0]
    assert isinstance(bye, SendRequest) and cseq_of(bye.request.headers) == (number + 1, "BYE")


def test_refer_follows_the_route_set_like_our_bye() -> None:
    rr = "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"
    dialog = new_dialog(extra=rr)
    dialog.ring(0.0)
    dialog.answer("127.0.0.1", 20000, 0.0)
    dialog.receive(in_dialog(dialog, "ACK"), 0.1)
    [action] = dialog.refer(TARGET, 1.0, timeout=30.0)
    assert isinstance(action, SendRequest)
    assert action.next_hop == "sip:p1.example;lr"
    assert action.request.headers.get_all("Route") == ["<sip:p1.example;lr>",
                                                       "<sip:p2.example;lr>"]


def test_accepted_then_100_then_200_transfers_and_says_bye() -> None:
    dialog = confirmed()
    request = refer(dialog)
    assert dialog.transferring
    assert dialog.refer_answered(answer(request, 202, "Accepted"), 1.1) == [
        TransferProgress(202, "Accepted")]
    trying = dialog.receive(notify(dialog, 2, "100 Trying"), 1.2)
    assert [a.response.status for a in trying if isinstance(a, Respond)] == [200]
    assert TransferProgress(100, "Trying") in trying
    done = dialog.receive(notify(dialog, 3, "200 OK", state="terminated;reason=noresource"), 2.0)
    assert isinstance(done[0], Respond) and done[0].response.status == 200
    assert done[1] == TransferDone(True, "200 OK", 200)
    assert isinstance(done[2], SendRequest) and done[2].request.method == "BYE"
    assert done[3] == Ended(TRANSFERRED)
    assert dialog.state is DialogState.TERMINATED and not dialog.transferring
    assert dialog.end_reason == TRANSFERRED


def test_a_notify_may_overtake_the_202() -> None:
    dialog = confirmed()
    request = refer(dialog)
    assert TransferProgress(100, "Trying") in dialog.receive(notify(dialog, 2, "100 Trying"), 1.05)
    assert dialog.refer_answered(answer(request, 202, "Accepted"), 1.1) == [
        TransferProgress(202, "Accepted")]


def test_a_refused_refer_fails_and_the_call_goes_on() -> None:
    dialog = confirmed()
    request = refer(dialog)
    assert dialog.refer_answered(answer(request, 603, "Decline"), 1.1) == [
        TransferDone(False, "REFER refused: 603 Decline", 603)]
    assert dialog.state is DialogState.CONFIRMED and not dialog.transferring
    assert dialog.next_deadline is None
    # A new transfer may be asked for afterwards.
    assert refer(dialog, 2.0).method == "REFER"


def test_no_answer_to_the_refer_fails() -> None:
    dialog = confirmed()
    refer(dialog)
    assert dialog.refer_answered(None, 33.0) == [TransferDone(False, "no answer to REFER")]


def test_a_failure_sipfrag_fails_the_transfer() -> None:
    dialog = confirmed()
    request = refer(dialog)
    dialog.refer_answered(answer(request, 202, "Accepted"), 1.1)
    actions = dialog.receive(notify(dialog, 2, "486 Busy Here", state="terminated"), 3.0)
    assert actions[1:] == [TransferDone(False, "486 Busy Here", 486)]
    assert dialog.state is DialogState.CONFIRMED


def test_terminated_without_a_final_status_fails() -> None:
    dialog = confirmed()
    dialog.refer_answered(answer(refer(dialog), 202, "Accepted"), 1.1)
    actions = dialog.receive(notify(dialog, 2, None, state="terminated;reason=timeout"), 3.0)
    assert actions[1:] == [TransferDone(False, "subscription ended without a final status")]


def test_no_final_notify_before_the_deadline_fails() -> None:
    dialog = confirmed()
    dialog.refer_answered(answer(refer(dialog, 1.0, timeout=20.0), 202, "Accepted"), 1.1)
    assert dialog.next_deadline == 21.0
    assert dialog.timer_fired(20.9) == []
    assert dialog.timer_fired(21.0) == [TransferDone(False, "no final NOTIFY in time")]
    assert dialog.next_deadline is None and dialog.state is DialogState.CONFIRMED


def test_only_one_refer_at_a_time_and_only_in_a_confirmed_dialog() -> None:
    dialog = confirmed()
    refer(dialog)
    assert dialog.refer(TARGET, 1.5, timeout=30.0) == []
    ringing = new_dialog()
    ringing.ring(0.0)
    assert ringing.refer(TARGET, 0.5, timeout=30.0) == []


def test_notify_without_a_transfer_or_for_another_event_or_refer_is_refused() -> None:
    dialog = confirmed()
    assert [a.response.status for a in dialog.receive(notify(dialog, 2, "200 OK"), 1.0)
            if isinstance(a, Respond)] == [481]
    request = refer(dialog)
    dialog.refer_answered(answer(request, 202, "Accepted"), 1.1)
    bad_event = dialog.receive(notify(dialog, 3, "200 OK", event="presence"), 1.2)
    assert [a.response.status for a in bad_event if isinstance(a, Respond)] == [489]
    number, _ = cseq_of(request.headers)
    other = dialog.receive(notify(dialog, 4, "200 OK", event=f"refer;id={number + 7}"), 1.3)
    assert [a.response.status for a in other if isinstance(a, Respond)] == [481]
    ours = dialog.receive(notify(dialog, 5, "200 OK", event=f"refer;id={number}"), 1.4)
    assert TransferDone(True, "200 OK", 200) in ours


def test_an_out_of_order_notify_is_500_and_changes_nothing() -> None:
    dialog = confirmed()
    dialog.refer_answered(answer(refer(dialog), 202, "Accepted"), 1.1)
    dialog.receive(notify(dialog, 5, "100 Trying"), 1.2)
    late = dialog.receive(notify(dialog, 4, "200 OK"), 1.3)
    assert [a.response.status for a in late if isinstance(a, Respond)] == [500]
    assert dialog.transferring


def test_notify_after_the_call_ended_is_481() -> None:
    dialog = confirmed()
    refer(dialog)
    dialog.receive(in_dialog(dialog, "BYE", cseq=2), 1.5)
    assert not dialog.transferring
    actions = dialog.receive(notify(dialog, 3, "200 OK"), 1.6)
    assert [a.response.status for a in actions if isinstance(a, Respond)] == [481]


def test_sipfrag_status_line() -> None:
    assert sipfrag_status(b"SIP/2.0 200 OK\r\n") == (200, "OK")
    assert sipfrag_status(b"SIP/2.0 603 Declined\r\nContact: <sip:x>\r\n") == (603, "Declined")
    assert sipfrag_status(b"SIP/2.0 100\r\n") == (100, "")
    for bad in (b"", b"HTTP/1.1 200 OK", b"SIP/2.0 2000 OK", b"SIP/2.0 099 x", b"SIP/2.0 abc"):
        assert sipfrag_status(bad) is None


def test_refer_to_survives_the_wire() -> None:
    dialog = confirmed()
    request = refer(dialog)
    request.headers.items.insert(0, ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr"))
    parsed = parse_message(serialize(request))
    assert isinstance(parsed, Request) and parsed.headers.get("Refer-To") == f"<{TARGET}>"
