"""Trio glue for the sans-IO transactions: sleep until the next deadline, feed inputs, act.

A server transaction has one inbox. The transport puts the requests it matched to the
transaction there (retransmitted INVITEs, ACKs); the TU puts its responses there wrapped in
`Respond`, usually through a `Responder` built on a clone of the inbox's send side. The runner
owns the receive side and closes it when the transaction ends, after which `Responder.respond`
is a no-op. `Send` actions go to `send`; every other action goes to `on_action`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import trio

from voicedashd.sip.message import Message, Request, Response
from voicedashd.sip.transaction import (
    Action,
    NonInviteClientTransaction,
    Send,
    ServerTransaction,
)

SendMessage: TypeAlias = Callable[[Message], Awaitable[None]]
OnAction: TypeAlias = Callable[[Action], Awaitable[None]]
Clock: TypeAlias = Callable[[], float]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Respond:
    """Server inbox item: a response from the TU for the transaction to send."""

    response: Response


ServerInput: TypeAlias = Request | Respond


@dataclass(frozen=True, slots=True)
class Responder:
    """The TU's handle on a running server transaction."""

    inbox: trio.MemorySendChannel[ServerInput]

    async def respond(self, response: Response) -> None:
        """Have the transaction send a response; does nothing once the transaction has ended."""
        with contextlib.suppress(trio.BrokenResourceError):
            await self.inbox.send(Respond(response))


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


async def run_server_transaction(
    tx: ServerTransaction,
    inbox: trio.MemoryReceiveChannel[ServerInput],
    send: SendMessage,
    on_action: OnAction | None = None,
    clock: Clock = trio.current_time,
) -> None:
    """Drive a server transaction until it terminates, or until it is abandoned.

    Abandoned means every send side of the inbox is closed and no timer runs (say the TU went
    away before sending a final response): the runner then returns without terminating it.
    """
    with inbox:
        while not tx.terminated:
            try:
                item = await _next_input(inbox, tx.next_deadline)
            except trio.EndOfChannel:
                return
            now = clock()
            if item is None:
                actions = tx.timer_fired(now)
            elif isinstance(item, Respond):
                actions = tx.respond(item.response, now)
            else:
                actions = tx.receive(item, now)
            await _perform(actions, send, on_action)


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
