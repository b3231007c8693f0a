"""Unit tests of the sans-IO SIP transaction state machines, with time passed in."""

from __future__ import annotations

import pytest

from voicedashd.sip.message import Headers, Request, Response
from voicedashd.sip.transaction import (
    Action,
    Deliver,
    InvalidTransactionHeaders,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    PassToCore,
    Send,
    State,
    Terminated,
    Timeout,
    Timers,
    cancel_target_key,
    client_key,
    invite_ack_key,
    server_key,
)

VIA = "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc123;rport"


def request(method: str, *, via: str = VIA, cseq: int = 1, to_tag: str = "") -> Request:
    """Build a request as the PBX would send it."""
    to = "<sip:200@192.0.2.20>" + (f";tag={to_tag}" if to_tag else "")
    return Request(
        method,
        "sip:200@192.0.2.20",
        Headers.of(
            [
                ("Via", via),
                ("From", '"Alice" <sip:100@192.0.2.10>;tag=from1'),
                ("To", to),
                ("Call-ID", "call-1@192.0.2.10"),
                ("CSeq", f"{cseq} {'INVITE' if method == 'ACK' else method}"),
                ("Max-Forwards", "70"),
            ]
        ),
    )


def response(req: Request, status: int, reason: str = "") -> Response:
    """Build a response to a request, copying the headers that identify it."""
    headers = Headers.of(
        [(n, req.headers.get(n) or "") for n in ("Via", "From", "To", "Call-ID", "CSeq")]
    )
    return Response(status, reason or str(status), headers)


def sends(actions: list[Action]) -> list[Request | Response]:
    """The messages among some actions."""
    return [a.message for a in actions if isinstance(a, Send)]


def run_timers(tx, until: float) -> list[tuple[float, Action]]:
    """Fire the transaction's timers at their deadlines up to `until`; (time, action) pairs."""
    fired: list[tuple[float, Action]] = []
    while (deadline := tx.next_deadline) is not None and deadline <= until:
        fired.extend((deadline, action) for action in tx.timer_fired(deadline))
    return fired


def send_times(fired: list[tuple[float, Action]]) -> list[float]:
    """The times at which Send actions were produced."""
    return [t for t, a in fired if isinstance(a, Send)]


# --- INVITE server transaction ---------------------------------------------------------------


def test_invite_server_emits_nothing_on_creation_and_starts_proceeding() -> None:
    tx = InviteServerTransaction(request("INVITE"), now=0.0)
    assert tx.state is State.PROCEEDING
    assert tx.next_deadline is None
    assert not tx.terminated


def test_retransmitted_invite_in_proceeding_resends_last_provisional() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    assert tx.receive(invite, 0.1) == []  # nothing to resend yet
    trying = response(invite, 100, "Trying")
    ringing = response(invite, 180, "Ringing")
    assert tx.respond(trying, 0.0) == [Send(trying)]
    assert sends(tx.receive(invite, 0.5)) == [trying]
    tx.respond(ringing, 1.0)
    assert sends(tx.receive(invite, 1.5)) == [ringing]
    assert tx.state is State.PROCEEDING
    assert tx.next_deadline is None  # provisional responses are never retransmitted


def test_2xx_is_retransmitted_at_doubling_intervals_capped_at_t2_until_ack() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    ok = response(invite, 200, "OK")
    assert tx.respond(ok, 0.0) == [Send(ok)]
    assert tx.state is State.ACCEPTED
    fired = run_timers(tx, until=20.0)
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert all(a == Send(ok) for _, a in fired)
    intervals = [b - a for a, b in zip([0.0, *send_times(fired)], send_times(fired), strict=False)]
    assert intervals == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_ack_for_2xx_is_passed_to_core_once_and_stops_retransmission() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    ok = response(invite, 200, "OK")
    tx.respond(ok, 0.0)
    run_timers(tx, until=2.0)  # retransmissions at 0.5 and 1.5
    ack = request("ACK", via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnewbranch", to_tag="t")
    assert tx.receive(ack, 2.2) == [PassToCore(ack)]
    assert tx.receive(ack, 2.3) == []  # a duplicate ACK is absorbed
    assert tx.receive(invite, 2.4) == []  # a late INVITE retransmission too
    assert tx.state is State.ACCEPTED
    fired = run_timers(tx, until=100.0)
    assert fired == [(32.0, Terminated())]  # timer L: no more sends, no Timeout
    assert tx.terminated
    assert tx.next_deadline is None


def test_no_ack_for_2xx_within_64_t1_times_out_so_the_tu_sends_bye() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    tx.respond(response(invite, 200), 0.0)
    fired = run_timers(tx, until=100.0)
    assert send_times(fired)[-1] == 31.5
    assert fired[-2:] == [(32.0, Timeout("ack")), (32.0, Terminated())]
    assert tx.terminated


def test_retransmitted_invite_in_accepted_resends_the_2xx() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    tx.respond(response(invite, 180), 0.0)
    ok = response(invite, 200, "OK")
    tx.respond(ok, 1.0)
    assert tx.receive(invite, 1.2) == [Send(ok)]


def test_respond_after_final_is_discarded_except_2xx_in_accepted() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    ok = response(invite, 200)
    tx.respond(ok, 0.0)
    assert tx.respond(response(invite, 180), 0.1) == []
    assert tx.respond(response(invite, 486), 0.1) == []
    ok_again = response(invite, 200)
    assert tx.respond(ok_again, 0.2) == [Send(ok_again)]

    busy_tx = InviteServerTransaction(invite, now=0.0)
    busy_tx.respond(response(invite, 486), 0.0)
    assert busy_tx.respond(response(invite, 200), 0.1) == []


def test_non_2xx_final_retransmits_with_timer_g_until_ack_then_timer_i() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=10.0)
    busy = response(invite, 486, "Busy Here")
    assert tx.respond(busy, 10.0) == [Send(busy)]
    assert tx.state is State.COMPLETED
    fired = run_timers(tx, until=18.0)
    assert send_times(fired) == [10.5, 11.5, 13.5, 17.5]
    assert sends(tx.receive(invite, 17.8)) == [busy]  # retransmitted INVITE
    ack = request("ACK")
    assert tx.receive(ack, 18.0) == []  # the ACK for a non-2xx is absorbed
    assert tx.state is State.CONFIRMED
    assert tx.receive(ack, 18.5) == []
    assert tx.receive(invite, 18.6) == []
    assert tx.next_deadline == 23.0  # timer I = T4
    assert run_timers(tx, until=100.0) == [(23.0, Terminated())]


def test_non_2xx_final_without_ack_times_out_at_timer_h() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    tx.respond(response(invite, 603), 0.0)
    fired = run_timers(tx, until=100.0)
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-2:] == [(32.0, Timeout("ack")), (32.0, Terminated())]


def test_invite_server_over_tcp_never_retransmits_and_ends_on_ack() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0, reliable=True)
    tx.respond(response(invite, 404), 0.0)
    assert tx.next_deadline == 32.0  # timer H only
    assert tx.receive(request("ACK"), 1.0) == [Terminated()]  # timer I = 0

    ok_tx = InviteServerTransaction(invite, now=0.0, reliable=True)
    ok = response(invite, 200)
    ok_tx.respond(ok, 0.0)
    assert ok_tx.next_deadline == 32.0  # timer L only, no 2xx retransmission
    assert run_timers(ok_tx, until=100.0) == [(32.0, Timeout("ack")), (32.0, Terminated())]


def test_custom_timers_change_the_schedule() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0, timers=Timers(t1=0.1, t2=0.3, t4=1.0))
    tx.respond(response(invite, 200), 0.0)
    fired = run_timers(tx, until=1.0)
    assert send_times(fired) == pytest.approx([0.1, 0.3, 0.6, 0.9])
    assert tx.timers.transaction_timeout == pytest.approx(6.4)


def test_timer_fired_early_does_nothing() -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, now=0.0)
    tx.respond(response(invite, 200), 0.0)
    assert tx.timer_fired(0.4) == []
    assert tx.next_deadline == 0.5


# --- non-INVITE server transaction -----------------------------------------------------------


def test_non_invite_server_resends_same_final_to_retransmitted_bye_then_timer_j() -> None:
    bye = request("BYE", cseq=2)
    tx = NonInviteServerTransaction(bye, now=0.0)
    assert tx.state is State.TRYING
    assert tx.receive(bye, 0.2) == []  # nothing sent yet: absorbed
    ok = response(bye, 200, "OK")
    assert tx.respond(ok, 0.3) == [Send(ok)]
    assert tx.state is State.COMPLETED
    assert tx.receive(bye, 0.8) == [Send(ok)]
    assert tx.receive(bye, 1.8) == [Send(ok)]
    assert tx.respond(response(bye, 500), 2.0) == []  # later finals are discarded
    assert tx.next_deadline == pytest.approx(32.3)
    assert run_timers(tx, until=100.0) == [(32.3, Terminated())]


def test_non_invite_server_provisional_then_final() -> None:
    options = request("OPTIONS")
    tx = NonInviteServerTransaction(options, now=0.0)
    trying = response(options, 100)
    tx.respond(trying, 0.0)
    assert tx.state is State.PROCEEDING
    assert tx.receive(options, 0.5) == [Send(trying)]
    assert tx.next_deadline is None


def test_non_invite_server_over_tcp_terminates_with_the_final_response() -> None:
    bye = request("BYE")
    tx = NonInviteServerTransaction(bye, now=0.0, reliable=True)
    ok = response(bye, 200)
    assert tx.respond(ok, 0.0) == [Send(ok), Terminated()]
    assert tx.terminated


# --- non-INVITE client transaction -----------------------------------------------------------


def test_client_sends_on_start_and_retransmits_with_timer_e_doubling_to_t2() -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye)
    assert tx.start(0.0) == [Send(bye)]
    with pytest.raises(RuntimeError):
        tx.start(0.0)
    fired = run_timers(tx, until=20.0)
    assert send_times(fired) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert all(a == Send(bye) for _, a in fired)


def test_client_provisional_switches_retransmission_to_t2() -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye)
    tx.start(0.0)
    assert send_times(run_timers(tx, until=0.5)) == [0.5]
    trying = response(bye, 100)
    assert tx.receive(trying, 0.7) == [Deliver(trying)]
    assert tx.state is State.PROCEEDING
    # Timer E was already armed for 1.5; from then on it is reset to T2 each time.
    assert send_times(run_timers(tx, until=14.0)) == [1.5, 5.5, 9.5, 13.5]


def test_client_timer_f_times_out() -> None:
    tx = NonInviteClientTransaction(request("BYE"))
    tx.start(100.0)
    fired = run_timers(tx, until=1000.0)
    assert send_times(fired)[-1] == 131.5
    assert fired[-2:] == [(132.0, Timeout("no_response")), (132.0, Terminated())]
    assert tx.final_response is None


def test_client_final_response_delivered_once_then_timer_k() -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye)
    tx.start(0.0)
    ok = response(bye, 200, "OK")
    assert tx.receive(ok, 0.8) == [Deliver(ok)]
    assert tx.state is State.COMPLETED
    assert tx.final_response is ok
    assert tx.receive(ok, 1.0) == []  # retransmitted final is absorbed
    assert tx.receive(response(bye, 100), 1.1) == []
    assert run_timers(tx, until=100.0) == [(5.8, Terminated())]  # timer K = T4, no resends


def test_client_over_tcp_has_no_timer_e_and_no_timer_k() -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye, reliable=True)
    tx.start(0.0)
    assert tx.next_deadline == 32.0  # timer F only
    ok = response(bye, 200)
    assert tx.receive(ok, 1.0) == [Deliver(ok), Terminated()]


# --- matching ---------------------------------------------------------------------------------


def test_server_key_maps_ack_to_invite_and_cancel_to_its_target() -> None:
    invite = request("INVITE")
    assert server_key(invite) == ("rfc3261", "z9hG4bKabc123", "192.0.2.10:5060", "INVITE")
    assert server_key(request("ACK")) == server_key(invite)
    cancel = request("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    assert server_key(request("BYE")) != server_key(invite)


def test_server_key_reads_first_value_of_first_via_line() -> None:
    folded = Request(
        "INVITE",
        "sip:200@pbx",
        Headers.of(
            [
                (
                    "v",
                    'SIP / 2.0 / TCP PBX.example : 5070 ;x="a,b";Branch=z9hG4bKq , '
                    "SIP/2.0/UDP other;branch=z9hG4bKzz",
                ),
                ("Via", "SIP/2.0/UDP third;branch=z9hG4bKyy"),
                ("CSeq", "1 INVITE"),
            ]
        ),
    )
    assert server_key(folded) == ("rfc3261", "z9hG4bKq", "pbx.example:5070", "INVITE")


def test_server_key_falls_back_for_rfc2543_branches() -> None:
    old_via = "SIP/2.0/UDP 192.0.2.10:5060;branch=1234"
    invite = request("INVITE", via=old_via)
    ack = request("ACK", via=old_via, to_tag="tt")
    assert server_key(invite)[0] == "rfc2543"
    assert server_key(ack) == server_key(invite)
    assert server_key(request("INVITE", via=old_via, cseq=2)) != server_key(invite)


def test_invite_ack_key_pairs_a_2xx_ack_with_a_new_branch() -> None:
    invite = request("INVITE")
    ack = request("ACK", via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKother", to_tag="t")
    assert server_key(ack) != server_key(invite)
    assert (
        invite_ack_key(ack) == invite_ack_key(invite) == ("ack", "call-1@192.0.2.10", "1", "from1")
    )


def test_client_key_matches_response_to_request() -> None:
    bye = request("BYE", via="SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKours")
    assert client_key(response(bye, 200)) == client_key(bye) == ("client", "z9hG4bKours", "BYE")
    other = request("OPTIONS", via="SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKours")
    assert client_key(response(other, 200)) != client_key(bye)


def test_keys_reject_messages_without_via_or_cseq() -> None:
    with pytest.raises(InvalidTransactionHeaders, match="Via"):
        server_key(Request("INVITE", "sip:x", Headers.of([("CSeq", "1 INVITE")])))
    with pytest.raises(InvalidTransactionHeaders, match="CSeq"):
        client_key(Response(200, "OK", Headers.of([("Via", VIA)])))
