"""The Trio transaction runners, on a virtual clock, over in-memory channels."""

from __future__ import annotations

import math

import trio
import trio.testing

from voicedashd.sip.message import Message, Response
from voicedashd.sip.transaction import (
    Action,
    Deliver,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    PassToCore,
    Terminated,
    Timeout,
)
from voicedashd.sip.transaction_runner import (
    Responder,
    ServerInput,
    run_client_transaction,
    run_server_transaction,
)

from .test_sip_transaction import request, response


class Recorder:
    """Collects what a runner sends and reports, stamped with the virtual time."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Message]] = []
        self.actions: list[tuple[float, Action]] = []

    async def send(self, message: Message) -> None:
        """Stand-in for the transport."""
        self.sent.append((trio.current_time(), message))

    async def on_action(self, action: Action) -> None:
        """Stand-in for the TU."""
        self.actions.append((trio.current_time(), action))

    def send_times(self) -> list[float]:
        """When messages were sent."""
        return [t for t, _ in self.sent]


def open_inbox() -> tuple[
    trio.MemorySendChannel[ServerInput], trio.MemoryReceiveChannel[ServerInput]
]:
    """A server transaction's inbox."""
    return trio.open_memory_channel[ServerInput](math.inf)


async def test_server_runner_retransmits_2xx_until_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, trio.current_time())
    rec = Recorder()
    to_tx, inbox = open_inbox()
    responder = Responder(to_tx.clone())
    ok = response(invite, 200, "OK")
    ack = request("ACK", via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack", to_tag="t")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server_transaction, tx, inbox, rec.send, rec.on_action)
            await responder.respond(response(invite, 100, "Trying"))
            await trio.sleep(1.0)
            await responder.respond(ok)
            await trio.sleep(10.0)  # the ACK arrives at t=11
            await to_tx.send(ack)
    assert rec.send_times() == [0.0, 1.0, 1.5, 2.5, 4.5, 8.5]
    assert [m for _, m in rec.sent[1:]] == [ok] * 5
    assert rec.actions == [(11.0, PassToCore(ack)), (33.0, Terminated())]
    assert trio.current_time() == 33.0  # the runner returned when timer L ended it
    await responder.respond(response(invite, 200))  # the transaction is gone: a no-op
    assert len(rec.sent) == 6


async def test_server_runner_times_out_without_ack(autojump_clock: trio.testing.MockClock) -> None:
    invite = request("INVITE")
    tx = InviteServerTransaction(invite, trio.current_time())
    rec = Recorder()
    to_tx, inbox = open_inbox()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server_transaction, tx, inbox, rec.send, rec.on_action)
            await Responder(to_tx).respond(response(invite, 200))
    assert rec.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert rec.actions == [(32.0, Timeout("ack")), (32.0, Terminated())]


async def test_server_runner_answers_retransmitted_bye(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE", cseq=2)
    tx = NonInviteServerTransaction(bye, trio.current_time())
    rec = Recorder()
    to_tx, inbox = open_inbox()
    ok = response(bye, 200)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_server_transaction, tx, inbox, rec.send, rec.on_action)
            await trio.sleep(0.1)
            await Responder(to_tx.clone()).respond(ok)
            await trio.sleep(0.4)
            await to_tx.send(bye)
    assert rec.sent == [(0.1, ok), (0.5, ok)]
    assert rec.actions == [(32.1, Terminated())]


async def test_server_runner_returns_when_abandoned(autojump_clock: trio.testing.MockClock) -> None:
    tx = InviteServerTransaction(request("INVITE"), trio.current_time())
    rec = Recorder()
    to_tx, inbox = open_inbox()
    to_tx.close()  # the TU went away before any final response: nothing can happen anymore
    with trio.fail_after(1):
        await run_server_transaction(tx, inbox, rec.send, rec.on_action)
    assert not tx.terminated
    assert rec.sent == []


async def test_client_runner_reports_final_response_early_and_lingers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye)
    rec = Recorder()
    to_tx, inbox = trio.open_memory_channel[Response](math.inf)
    ok = response(bye, 200, "OK")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_deliver_later, to_tx, [(2.0, ok), (2.5, ok)])
            final = await nursery.start(run_client_transaction, tx, inbox, rec.send, rec.on_action)
            assert final is ok
            assert trio.current_time() == 2.0
    assert rec.send_times() == [0.0, 0.5, 1.5]
    assert rec.actions == [(2.0, Deliver(ok)), (7.0, Terminated())]  # timer K = T4


async def test_client_runner_returns_none_on_timer_f(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye)
    rec = Recorder()
    _, inbox = trio.open_memory_channel[Response](math.inf)
    with trio.fail_after(60):
        final = await run_client_transaction(tx, inbox, rec.send, rec.on_action)
    assert final is None
    assert rec.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert rec.actions == [(32.0, Timeout("no_response")), (32.0, Terminated())]


async def test_client_runner_over_tcp_returns_at_the_final_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE")
    tx = NonInviteClientTransaction(bye, reliable=True)
    rec = Recorder()
    to_tx, inbox = trio.open_memory_channel[Response](math.inf)
    trying, ok = response(bye, 100), response(bye, 200)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_deliver_later, to_tx, [(3.0, trying), (9.0, ok)])
            final = await run_client_transaction(tx, inbox, rec.send, rec.on_action)
    assert final is ok
    assert rec.send_times() == [0.0]
    assert rec.actions == [(3.0, Deliver(trying)), (9.0, Deliver(ok)), (9.0, Terminated())]


async def _deliver_later(
    channel: trio.MemorySendChannel[Response], schedule: list[tuple[float, Response]]
) -> None:
    """Play responses into a client transaction's inbox at the given virtual times."""
    for at, message in schedule:
        await trio.sleep_until(at)
        await channel.send(message)
