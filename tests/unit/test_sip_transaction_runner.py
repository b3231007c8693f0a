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
    ServerTransaction,
    Terminated,
    Timeout,
    server_key,
)
from voicedashd.sip.transaction_runner import ServerTransactionRunner, run_client_transaction
from voicedashd.sip.transport import Peer

from .test_sip_transaction import request, response

PEER = Peer("UDP", "192.0.2.10", 5060)


class Recorder:
    """Collects what a runner sends and reports, stamped with the virtual time."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Message]] = []
        self.actions: list[tuple[float, Action]] = []

    async def send(self, message: Message) -> None:
        """Stand-in for the transport (client runner)."""
        self.sent.append((trio.current_time(), message))

    def send_response(self, runner: ServerTransactionRunner, message: Message) -> None:
        """Stand-in for the transport (server runner)."""
        assert runner.destination == PEER
        self.sent.append((trio.current_time(), message))

    async def on_action(self, action: Action) -> None:
        """Stand-in for the TU (client runner)."""
        self.actions.append((trio.current_time(), action))

    def transaction_action(self, runner: ServerTransactionRunner, action: Action) -> None:
        """Stand-in for the TU (server runner)."""
        self.actions.append((trio.current_time(), action))

    def send_times(self) -> list[float]:
        """When messages were sent."""
        return [t for t, _ in self.sent]


def server_runner(tx: ServerTransaction, rec: Recorder) -> ServerTransactionRunner:
    """A server runner that records into rec."""
    return ServerTransactionRunner(tx, rec, key=server_key(tx.request), destination=PEER)


async def test_server_runner_retransmits_2xx_until_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    invite = request("INVITE")
    rec = Recorder()
    runner = server_runner(InviteServerTransaction(invite, trio.current_time()), rec)
    ok = response(invite, 200, "OK")
    ack = request("ACK", via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack", to_tag="t")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            runner.respond(response(invite, 100, "Trying"))
            await trio.sleep(1.0)
            runner.respond(ok)
            await trio.sleep(10.0)  # the ACK arrives at t=11
            runner.receive(ack)
    assert rec.send_times() == [0.0, 1.0, 1.5, 2.5, 4.5, 8.5]
    assert [m for _, m in rec.sent[1:]] == [ok] * 5
    assert rec.actions == [(11.0, PassToCore(ack)), (33.0, Terminated())]
    assert trio.current_time() == 33.0  # the runner returned when timer L ended it
    runner.respond(response(invite, 200))  # the transaction is gone: a no-op
    assert len(rec.sent) == 6


async def test_server_runner_sends_responses_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    invite = request("INVITE")
    rec = Recorder()
    runner = server_runner(InviteServerTransaction(invite, trio.current_time()), rec)
    trying, ok = response(invite, 100, "Trying"), response(invite, 200, "OK")
    runner.respond(trying)          # before run() has even started
    runner.respond(ok)
    assert [m for _, m in rec.sent] == [trying, ok]
    runner.receive(invite)          # a retransmitted INVITE gets the last response again
    assert [m for _, m in rec.sent] == [trying, ok, ok]


async def test_server_runner_times_out_without_ack(autojump_clock: trio.testing.MockClock) -> None:
    invite = request("INVITE")
    rec = Recorder()
    runner = server_runner(InviteServerTransaction(invite, trio.current_time()), rec)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            runner.respond(response(invite, 200))
    assert rec.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert rec.actions == [(32.0, Timeout("ack")), (32.0, Terminated())]


async def test_server_runner_answers_retransmitted_bye(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE", cseq=2)
    rec = Recorder()
    runner = server_runner(NonInviteServerTransaction(bye, trio.current_time()), rec)
    ok = response(bye, 200)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            await trio.sleep(0.1)
            runner.respond(ok)
            await trio.sleep(0.4)
            runner.receive(bye)
    assert rec.sent == [(0.1, ok), (0.5, ok)]
    assert rec.actions == [(32.1, Terminated())]


async def test_server_runner_returns_at_once_when_tcp_ends_the_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bye = request("BYE", cseq=2)
    rec = Recorder()
    runner = server_runner(NonInviteServerTransaction(bye, trio.current_time(), reliable=True),
                           rec)
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            await trio.sleep(0.2)
            runner.respond(response(bye, 200))   # terminates it: the sleeping run() returns
    assert trio.current_time() == 0.2
    assert rec.actions == [(0.2, Terminated())]


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
