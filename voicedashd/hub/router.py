"""Routes each bus event to the connections that may want it, without visiting all of them."""

from __future__ import annotations

from typing import Any, Protocol

from ..events import CallEnded, CallEvent, CallInfo, CallStarted, CallSummarized

LOBBY_EVENTS = (CallStarted, CallEnded, CallSummarized)
# The lobby's last word on a call: a connection not following it forgets the call after these.
LOBBY_FINAL = (CallEnded, CallSummarized)


class Recipient(Protocol):
    """A connection as the router sees it; `deliver` decides (with may_see) and never blocks."""

    def deliver(self, info: CallInfo, event: CallEvent) -> None:
        """Take one event, synchronously."""


class Router:
    """Indexes connections by followed call, by (tenant, extension) and by admin tenant.

    The index only narrows down who is asked; each connection still applies `may_see` to every
    event it gets, so the authorization rule stays in one place.
    """

    def __init__(self) -> None:
        self._followers: dict[str, set[Recipient]] = {}
        self._users: dict[tuple[str, str], set[Recipient]] = {}
        self._admins: dict[str, set[Recipient]] = {}

    def publish(self, info: CallInfo, event: CallEvent) -> None:
        """The bus callback: hand an event to the followers of its call and, for lobby
        notices, to the callee's and the tenant admins' connections."""
        followers = self._followers.get(event.call_id, ())
        for recipient in list(followers):
            recipient.deliver(info, event)
        if isinstance(event, LOBBY_EVENTS):
            lobby = [*self._users.get((info.tenant, info.callee_extension), ()),
                     *self._admins.get(info.tenant, ())]
            for recipient in lobby:
                if recipient not in followers:
                    recipient.deliver(info, event)

    def join(self, recipient: Recipient, tenant: str, extension: str, admin: bool) -> None:
        """Put an authenticated connection in its lobby."""
        if admin:
            self._admins.setdefault(tenant, set()).add(recipient)
        else:
            self._users.setdefault((tenant, extension), set()).add(recipient)

    def leave(self, recipient: Recipient, tenant: str, extension: str) -> None:
        """Take a connection out of its lobby."""
        _discard(self._admins, tenant, recipient)
        _discard(self._users, (tenant, extension), recipient)

    def follow(self, recipient: Recipient, call_id: str) -> None:
        """Send a call's events to a connection."""
        self._followers.setdefault(call_id, set()).add(recipient)

    def unfollow(self, recipient: Recipient, call_id: str) -> None:
        """Stop sending a call's events to a connection."""
        _discard(self._followers, call_id, recipient)

    def counts(self) -> tuple[int, int]:
        """How many calls are followed and how many lobby entries there are (for tests)."""
        lobby = sum(map(len, self._users.values())) + sum(map(len, self._admins.values()))
        return len(self._followers), lobby


def _discard(table: dict[Any, set[Recipient]], key: Any, recipient: Recipient) -> None:
    members = table.get(key)
    if members is not None:
        members.discard(recipient)
        if not members:
            del table[key]
