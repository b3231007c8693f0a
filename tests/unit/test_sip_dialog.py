"""The sans-IO UAS dialog, driven request by request with a fake clock."""

from __future__ import annotations

import pytest

from voicedashd.sip.dialog import (
    ACK_TIMEOUT,
    CALLER_HANGUP,
    CANCELLED,
    Action,
    Confirmed,
    Dialog,
    DialogState,
    Ended,
    InvalidInvite,
    MediaChanged,
    Respond,
    SendRequest,
    dialog_key,
    invite_key,
    parse_invite,
    unknown_dialog,
)
from voicedashd.sip.fields import cseq_of, tag_of
from voicedashd.sip.message import Request
from voicedashd.sip.parser import parse_message
from voicedashd.sip.sdp import DEFAULT_CODECS
from voicedashd.sip.transaction import Timers

SDP = ("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
HOLD = SDP.replace("a=sendrecv", "a=sendonly")
G722_ONLY = SDP.replace("RTP/AVP 0 101", "RTP/AVP 9").replace("a=rtpmap:0 PCMU/8000", "")
GSM_ONLY = SDP.replace("RTP/AVP 0 101", "RTP/AVP 3").replace("a=rtpmap:0 PCMU/8000", "")
PCMU_AND_G722 = SDP.replace("RTP/AVP 0 101", "RTP/AVP 0 9 101")
CONTACT = "<sip:127.0.0.1:5060>"
TIMERS = Timers()


def message(method: str, *, cseq: int = 1, to_tag: str | None = None, body: str = "",
            branch: str = "z9hG4bKinv", cseq_method: str | None = None,
            extra: str = "") -> Request:
    """A request from the PBX (alice@192.0.2.10) in call c1, as the parser reads it."""
    to = "<sip:1001@pbx.example>" + (f";tag={to_tag}" if to_tag else "")
    text = (f"{method} sip:1001@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n"
            'From: "Alice" <sip:alice@pbx.example>;tag=from1\r\n'
            f"To: {to}\r\nCall-ID: c1\r\nCSeq: {cseq} {cseq_method or method}\r\n"
            "Contact: <sip:alice@192.0.2.10:5060>\r\nMax-Forwards: 70\r\n" + extra +
            ("Content-Type: application/sdp\r\n" if body else "") +
            f"Content-Length: {len(body)}\r\n\r\n{body}")
    parsed = parse_message(text.encode())
    assert isinstance(parsed, Request)
    return parsed


def new_dialog(*, sdp: str = SDP, extra: str = "", retransmit_2xx: bool = True,
               transport: str = "UDP", codecs: tuple[str, ...] = DEFAULT_CODECS) -> Dialog:
    invite = parse_invite(message("INVITE", body=sdp, extra=extra), transport=transport)
    return Dialog(invite, contact=CONTACT, user_agent="voicedashd-test", timers=TIMERS,
                  retransmit_2xx=retransmit_2xx, codecs=codecs)


def statuses(actions: list[Action]) -> list[int]:
    return [a.response.status for a in actions if isinstance(a, Respond)]


def ended(actions: list[Action]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Ended)]


def answered(**kwargs: object) -> Dialog:
    dialog = new_dialog(**kwargs)  # type: ignore[arg-type]
    dialog.ring(0.0)
    dialog.answer("127.0.0.1", 20000, 0.0)
    return dialog


def confirmed(**kwargs: object) -> Dialog:
    dialog = answered(**kwargs)
    assert dialog.receive(in_dialog(dialog, "ACK", branch="z9hG4bKack"), 0.1) == [Confirmed()]
    return dialog


def in_dialog(dialog: Dialog, method: str, *, cseq: int = 1, body: str = "",
              branch: str = "z9hG4bKin") -> Request:
    return message(method, cseq=cseq, to_tag=dialog.local_tag, body=body, branch=branch)


# --- the INVITE, read once ---------------------------------------------------------------------


def test_parse_invite_reads_who_and_where_once() -> None:
    rr = "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"
    div = "Diversion: <sip:2002@pbx.example>;reason=no-answer\r\n"
    invite = parse_invite(message("INVITE", body=SDP, extra=rr + div), transport="UDP")
    assert (invite.call_id, invite.cseq, invite.remote_tag) == ("c1", 1, "from1")
    assert (invite.caller, invite.caller_name, invite.callee) == ("alice", "Alice", "1001")
    assert invite.callee_extension == "2002"  # the number dialed before the PBX forwarded
    assert invite.domain == "pbx.example"
    assert invite.remote_target == "sip:alice@192.0.2.10:5060"
    assert invite.route_set == ("<sip:p1.example;lr>", "<sip:p2.example;lr>")
    assert invite.offer.audio is not None and invite.offer.audio.port == 4000
    assert not invite.reliable and parse_invite(invite.request, transport="TCP").reliable
    assert invite.key == invite_key(message("CANCEL", branch="z9hG4bKinv")) == ("c1", "from1", 1)


@pytest.mark.parametrize(("body", "extra", "status"), [
    ("v=0\r\nbogus\r\n", "", 488),
    (SDP, "", 400),
])
def test_parse_invite_says_what_to_answer_when_unusable(body: str, extra: str,
                                                        status: int) -> None:
    request = message("INVITE", body=body)
    if status == 400:
        request.headers.set("From", "no uri here;tag=1")
    with pytest.raises(InvalidInvite) as caught:
        parse_invite(request, transport="UDP")
    assert caught.value.status == status


def test_an_offer_naming_a_host_is_refused_with_488_and_a_warning() -> None:
    named = SDP.replace("c=IN IP4 192.0.2.10", "c=IN IP4 pbx.example")
    with pytest.raises(InvalidInvite) as caught:
        parse_invite(message("INVITE", body=named), transport="UDP")
    problem = "c= address 'pbx.example' is not an IP address"
    assert (caught.value.status, caught.value.reason) == (488, f"Not Acceptable Here - {problem}")
    assert caught.value.headers == (("Warning", f'399 voicedashd "{problem}"'),)


# --- early: ringing, answer, reject ----------------------------------------------------------


def test_ring_then_answer_then_ack_confirms_once() -> None:
    dialog = new_dialog()
    ringing = dialog.ring(0.0)
    assert statuses(ringing) == [180]
    [ring] = ringing
    assert isinstance(ring, Respond) and tag_of(ring.response.headers.get("To")) == dialog.local_tag
    assert ring.response.headers.get("Contact") == CONTACT
    [ok] = dialog.answer("127.0.0.1", 20000, 1.0)
    assert isinstance(ok, Respond) and ok.response.status == 200
    assert b"m=audio 20000 RTP/AVP 0 101" in ok.response.body
    assert dialog.state is DialogState.ANSWERED
    assert dialog.key == ("c1", dialog.local_tag, "from1")
    ack = in_dialog(dialog, "ACK", branch="z9hG4bKnew")
    assert dialog_key(ack) == dialog.key
    assert dialog.receive(ack, 1.2) == [Confirmed()]
    assert dialog.receive(ack, 1.3) == []  # a retransmitted ACK confirms nothing twice
    assert dialog.state is DialogState.CONFIRMED and dialog.next_deadline is None


def test_no_common_codec_is_refused_with_488_and_a_warning() -> None:
    dialog = new_dialog(sdp=GSM_ONLY)
    actions = dialog.ring(0.0)
    assert statuses(actions) == [488] and ended(actions) == ["rejected"]
    [refusal, _] = actions
    assert isinstance(refusal, Respond) and "304" in (refusal.response.headers.get("Warning") or "")
    assert dialog.answer("127.0.0.1", 20000, 0.1) == []


def test_retransmitted_invite_gets_the_last_final_response_until_the_ack() -> None:
    dialog = new_dialog()
    first = message("INVITE", body=SDP)
    assert dialog.receive(first, 0.0) == []  # nothing final yet: the transaction sent 100
    dialog.ring(0.0)
    [ok] = dialog.answer("127.0.0.1", 20000, 0.0)
    assert isinstance(ok, Respond)
    again = dialog.receive(first, 0.2)
    assert again == [Respond(first, ok.response)]
    dialog.receive(in_dialog(dialog, "ACK"), 0.3)
    assert dialog.receive(first, 0.4) == []


def test_2xx_is_resent_on_the_t1_t2_schedule_until_the_ack() -> None:
    dialog = answered()
    fired = []
    now = 0.0
    while (deadline := dialog.next_deadline) is not None and deadline < 4:
        now = deadline
        fired += [(now, statuses(dialog.timer_fired(now)))]
    assert fired == [(0.5, [200]), (1.5, [200]), (3.5, [200])]
    dialog.receive(in_dialog(dialog, "ACK"), now)
    assert dialog.next_deadline is None


def test_no_2xx_resend_over_tcp_or_behind_a_transaction_that_does_it() -> None:
    for dialog in (answered(transport="TCP"), answered(retransmit_2xx=False)):
        assert dialog.next_deadline == 64 * TIMERS.t1  # only the ACK timeout


def test_ack_timeout_sends_bye_and_ends_the_call() -> None:
    dialog = answered(retransmit_2xx=False)
    assert dialog.timer_fired(31.9) == []
    actions = dialog.timer_fired(32.0)
    assert [type(a) for a in actions] == [SendRequest, Ended]
    assert ended(actions) == [ACK_TIMEOUT] and dialog.terminated
    assert dialog.next_deadline is None


def test_ack_for_a_non_2xx_changes_nothing() -> None:
    dialog = new_dialog()
    dialog.ring(0.0)
    dialog.reject(503, "Service Unavailable - no RTP ports")
    assert dialog.terminated
    assert dialog.receive(message("ACK", to_tag=dialog.local_tag, cseq_method="ACK"), 0.1) == []
    assert dialog.end_reason == "error"


# --- CANCEL --------------------------------------------------------------------------------------


def test_cancel_before_the_answer_ends_the_invite_with_487() -> None:
    dialog = new_dialog()
    dialog.ring(0.0)
    cancel = message("CANCEL")
    actions = dialog.receive(cancel, 0.5)
    assert statuses(actions) == [200, 487] and ended(actions) == [CANCELLED]
    [ok, terminated, _] = actions
    assert isinstance(ok, Respond) and ok.request is cancel
    assert isinstance(terminated, Respond) and terminated.request is dialog.invite.request
    assert statuses(dialog.receive(cancel, 0.6)) == [481]  # nothing left to cancel


def test_cancel_after_the_answer_is_200_and_has_no_effect() -> None:
    for dialog in (answered(), confirmed()):
        state = dialog.state
        actions = dialog.receive(message("CANCEL"), 1.0)
        assert statuses(actions) == [200] and ended(actions) == []
        assert dialog.state is state


# --- BYE both ways, glare --------------------------------------------------------------------


def test_bye_from_the_caller_is_answered_and_ends_the_call() -> None:
    dialog = confirmed()
    actions = dialog.receive(in_dialog(dialog, "BYE", cseq=2), 5.0)
    assert statuses(actions) == [200] and ended(actions) == [CALLER_HANGUP]
    assert statuses(dialog.receive(in_dialog(dialog, "BYE", cseq=3), 5.1)) == [481]


def test_our_bye_follows_the_route_set_and_targets_the_contact() -> None:
    rr = "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n"
    dialog = confirmed(extra=rr)
    actions = dialog.hang_up("bot_hangup", 9.0)
    [bye, end] = actions
    assert end == Ended("bot_hangup")
    assert isinstance(bye, SendRequest)
    request = bye.request
    assert (request.method, request.uri) == ("BYE", "sip:alice@192.0.2.10:5060")
    assert request.headers.get_all("Route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert bye.next_hop == "sip:p1.example;lr"
    assert tag_of(request.headers.get("From")) == dialog.local_tag
    assert tag_of(request.headers.get("To")) == "from1"
    assert request.headers.get("Via") is None  # the transport adds its own
    number, method = cseq_of(request.headers)
    assert method == "BYE" and number >= 2
    assert dialog.hang_up("shutdown", 9.5) == []  # ends once


def test_strict_router_gets_the_request_uri_and_the_target_goes_last() -> None:
    dialog = confirmed(extra="Record-Route: <sip:strict.example>\r\n")
    [bye, _] = dialog.hang_up("shutdown", 1.0)
    assert isinstance(bye, SendRequest)
    assert bye.request.uri == "sip:strict.example"
    assert bye.request.headers.get_all("Route") == ["<sip:alice@192.0.2.10:5060>"]


def test_glare_their_bye_crossing_ours_gets_200_and_no_second_end() -> None:
    dialog = confirmed()
    assert ended(dialog.hang_up("bot_hangup", 3.0)) == ["bot_hangup"]
    actions = dialog.receive(in_dialog(dialog, "BYE", cseq=2), 3.01)
    assert statuses(actions) == [200] and ended(actions) == []
    assert dialog.end_reason == "bot_hangup"


def test_hanging_up_while_ringing_answers_the_invite_instead_of_bye() -> None:
    dialog = new_dialog()
    dialog.ring(0.0)
    actions = dialog.hang_up("shutdown", 0.1)
    assert statuses(actions) == [503] and ended(actions) == ["shutdown"]
    assert not any(isinstance(a, SendRequest) for a in actions)


# --- re-INVITE -------------------------------------------------------------------------------


def test_reinvite_hold_and_unhold_change_the_answer_and_its_version() -> None:
    dialog = confirmed()
    first = dialog.answer_sdp
    assert first is not None and not first.on_hold
    hold = dialog.receive(in_dialog(dialog, "INVITE", cseq=2, body=HOLD), 10.0)
    assert statuses(hold) == [100, 200]
    [changed] = [a for a in hold if isinstance(a, MediaChanged)]
    assert changed.answer.on_hold and b"a=recvonly" in changed.answer.body
    assert b"o=- " in changed.answer.body and changed.answer.body != first.body
    unhold = dialog.receive(in_dialog(dialog, "INVITE", cseq=3, body=SDP), 20.0)
    [back] = [a for a in unhold if isinstance(a, MediaChanged)]
    assert not back.answer.on_hold and b"a=sendrecv" in back.answer.body
    # Each change is a new session version (RFC 3264 §8): 1, 2, 3.
    assert [_version(a.body) for a in (first, changed.answer, back.answer)] == [1, 2, 3]
    assert dialog.state is DialogState.CONFIRMED


def test_the_codec_follows_our_preference_and_a_reinvite_keeps_it_while_offered() -> None:
    wideband = confirmed(sdp=PCMU_AND_G722)
    assert wideband.answer_sdp is not None and wideband.answer_sdp.codec == "G722"
    assert confirmed(sdp=G722_ONLY).answer_sdp.codec == "G722"  # type: ignore[union-attr]
    narrow = confirmed(sdp=PCMU_AND_G722, codecs=("PCMU", "G722"))
    assert narrow.answer_sdp is not None and narrow.answer_sdp.codec == "PCMU"
    # The PBX re-offers both (unhold): the codec in use stays, though G.722 comes first in
    # media.codecs; dropped from an offer, the next of ours takes over.
    dialog = confirmed(sdp=SDP, codecs=("G722", "PCMU"))
    again = dialog.receive(in_dialog(dialog, "INVITE", cseq=2, body=PCMU_AND_G722), 1.0)
    [changed] = [a for a in again if isinstance(a, MediaChanged)]
    assert changed.answer.codec == "PCMU"
    only = dialog.receive(in_dialog(dialog, "INVITE", cseq=3, body=G722_ONLY), 2.0)
    [changed] = [a for a in only if isinstance(a, MediaChanged)]
    assert changed.answer.codec == "G722" and b"RTP/AVP 9\r\n" in changed.answer.body


def test_reinvite_with_the_same_offer_keeps_the_version_and_bad_sdp_gets_488() -> None:
    dialog = confirmed()
    same = dialog.receive(in_dialog(dialog, "INVITE", cseq=2, body=SDP), 1.0)
    [changed] = [a for a in same if isinstance(a, MediaChanged)]
    assert _version(changed.answer.body) == 1
    bad = dialog.receive(in_dialog(dialog, "INVITE", cseq=3, body=GSM_ONLY), 2.0)
    assert statuses(bad) == [100, 488]
    stale = dialog.receive(in_dialog(dialog, "INVITE", cseq=3, body=SDP), 3.0)
    assert statuses(stale) == [100, 500]


def test_reinvite_naming_a_host_gets_488_and_leaves_dialog_and_media_as_they_were() -> None:
    dialog = confirmed()
    before = dialog.answer_sdp
    named = HOLD.replace("c=IN IP4 192.0.2.10", "c=IN IP4 hang.invalid")
    refused = dialog.receive(in_dialog(dialog, "INVITE", cseq=2, body=named), 1.0)
    assert statuses(refused) == [100, 488]
    assert not [a for a in refused if isinstance(a, MediaChanged)]
    response = refused[-1].response  # type: ignore[union-attr]
    assert response.reason == "Not Acceptable Here - c= address 'hang.invalid' is not an IP address"
    assert response.headers.get("Warning") == (
        '399 voicedashd "c= address \'hang.invalid\' is not an IP address"')
    assert dialog.answer_sdp is before and dialog.state is DialogState.CONFIRMED
    hold = dialog.receive(in_dialog(dialog, "INVITE", cseq=3, body=HOLD), 2.0)
    assert statuses(hold) == [100, 200]
    [changed] = [a for a in hold if isinstance(a, MediaChanged)]
    assert _version(changed.answer.body) == 2  # the refused offer changed no version


def test_reinvite_before_the_ack_is_481() -> None:
    dialog = answered()
    assert statuses(dialog.receive(in_dialog(dialog, "INVITE", cseq=2, body=SDP), 0.2)) == [
        100, 481]


def _version(body: bytes) -> int:
    origin = next(line for line in body.decode().splitlines() if line.startswith("o="))
    return int(origin.split()[2])


# --- unknown dialogs -----------------------------------------------------------------------------


def test_unknown_dialog_is_481() -> None:
    bye = message("BYE", to_tag="nobody", cseq=2)
    response = unknown_dialog(bye)
    assert (response.status, response.headers.get("Call-ID")) == (481, "c1")
    assert dialog_key(bye) == ("c1", "nobody", "from1")
