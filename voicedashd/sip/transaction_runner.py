"""Trio glue for the sans-IO transactions: feed inputs, perform actions, keep the timers.

A server transaction is driven by a `ServerTransactionRunner`. Its inputs (the requests the
transport matched to it, the TU's responses) are applied at once, in the caller's task, and
their sends happen there too: a response costs no trip through the scheduler. The runner's
own task (`run`) only keeps the transaction's timers — it sleeps in a cancel scope whose
deadline follows `next_deadline` — and returns when the transaction terminates. `Send`
actions go to the `TransactionUser`'s send_response, every other action (`Terminated`
included) to its transaction_action; one user serves every transaction of an endpoint.

A client transaction (our own BYE) is driven by `run_client_transaction` from its inbox.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeAlias, TypeVar

import trio

from voicedashd.sip.message import Message, Request, Response
from voicedashd.sip.transaction import (
    Action,
    NonInviteClientTransaction,
    Send,
    ServerTransaction,
    TransactionKey,
)
from voicedashd.sip.transport import Peer

SendMessage: TypeAlias = Callable[[Message], Awaitable[None]]
OnAction: TypeAlias = Callable[[Action], Awaitable[None]]
Clock: TypeAlias = Callable[[], float]
T = TypeVar("T")


class TransactionUser(Protocol):
    """Where a server transaction's actions go: its sends, and everything else."""

    def send_response(self, runner: ServerTransactionRunner, message: Message) -> None:
        """Send a message of the transaction (to `runner.destination`)."""

    def transaction_action(self, runner: ServerTransactionRunner, action: Action) -> None:
        """Take an action that is not a send (an ACK passed up, a timeout, the end)."""


class ServerTransactionRunner:
    """Drives one server transaction: inputs apply at once; `run` keeps its timers."""

    __slots__ = ("_clock", "_timer", "_user", "destination", "key", "tx")

    def __init__(self, tx: ServerTransaction, user: TransactionUser, *, key: TransactionKey,
                 destination: Peer, clock: Clock = trio.current_time) -> None:
        self.tx = tx
        self.key = key
        self.destination = destination
        self._user = user
        self._clock = clock
        # Entered by run(); until then (and between timers) inputs just move its deadline.
        self._timer = trio.CancelScope(deadline=self._wake_at())

    def receive(self, request: Request) -> None:
        """Feed a request the transport matched to the transaction (retransmission, ACK)."""
        if not self.tx.terminated:
            self._perform(self.tx.receive(request, self._clock()))

    def respond(self, response: Response) -> None:
        """Have the transaction send a response; does nothing once it has ended."""
        if not self.tx.terminated:
            self._perform(self.tx.respond(response, self._clock()))

    async def run(self) -> None:
        """Fire the transaction's timers when due; return once it has terminated."""
        tx = self.tx
        while not tx.terminated:
            with self._timer:
                await trio.sleep_forever()
            if tx.terminated:
                return
            self._perform(tx.timer_fired(self._clock()))
            self._timer = trio.CancelScope(deadline=self._wake_at())

    def _perform(self, actions: list[Action]) -> None:
        user = self._user
        for action in actions:
            if isinstance(action, Send):
                user.send_response(self, action.message)
            else:
                user.transaction_action(self, action)
        self._timer.deadline = self._wake_at()

    def _wake_at(self) -> float:
        """When run() must next wake: the next timer, at once if ended, else never."""
        if self.tx.terminated:
            return -math.inf
        deadline = self.tx.next_deadline
        return math.inf if deadline is None else deadline


async def _perform(actions: list[Action], send: SendMessage, on_action: OnAction | None) -> None:
    for action in actions:
        if isinstance(action, Send):
            await send(action.message)
        elif on_action is not None:
            await on_action(action)


async def _next_input(inbox: trio.MemoryReceiveChannel[T], deadline: float | None) -> T | None:
    """The next inbox item, or None once `deadline` passes; an ended inbox waits it out.

    With no deadline, an ended inbox raises `trio.EndOfChannel`: nothing can happen anymore.
    """
    if deadline is None:
        return await inbox.receive()
    with trio.move_on_at(deadline):
        try:
            return await inbox.receive()
        except trio.EndOfChannel:
            await trio.sleep_forever()
    return None


async def run_client_transaction(
    tx: NonInviteClientTransaction,
    inbox: trio.MemoryReceiveChannel[Response],
    send: SendMessage,
    on_action: OnAction | None = None,
    clock: Clock = trio.current_time,
    *,
    task_status: trio.TaskStatus[Response | None] = trio.TASK_STATUS_IGNORED,
) -> Response | None:
    """Start a client transaction and drive it to its end; return the final response or None.

    None means timer F fired without a final response. Under `nursery.start()` the same value
    comes back as soon as it is known, while the task lingers in Completed (timer K) to absorb
    retransmitted responses.
    """
    reported = False
    with inbox:
        await _perform(tx.start(clock()), send, on_action)
        while not tx.terminated:
            response = await _next_input(inbox, tx.next_deadline)
            now = clock()
            actions = tx.timer_fired(now) if response is None else tx.receive(response, now)
            await _perform(actions, send, on_action)
            if not reported and (tx.final_response is not None or tx.terminated):
                reported = True
                task_status.started(tx.final_response)
    return tx.final_response
