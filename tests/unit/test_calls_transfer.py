"""CallManager.transfer refuses what cannot be transferred (fake transactions, no sockets)."""

from __future__ import annotations

import pytest

from tests.unit.test_calls import World, config, world  # noqa: F401 - the fixtures
from voicedashd.calls import TransferNotPossible
from voicedashd.events import TransferStarted


async def test_a_call_not_yet_confirmed_cannot_be_transferred(world: World) -> None:  # noqa: F811
    world.invite()  # answered, the ACK not here yet
    [call] = world.manager.active_calls()
    with pytest.raises(TransferNotPossible) as refused:
        world.manager.transfer(call, requested_by="1001")
    assert refused.value.code == "not_live"
    assert call.transfer is None
    assert not [e for e in world.bus.events if e[0] is TransferStarted]
    assert not [r for r, _ in world.sip.byes if r.method == "REFER"]


async def test_a_notify_for_no_dialog_is_481(world: World) -> None:  # noqa: F811
    assert world.send("NOTIFY", to_tag="nobody").statuses == [481]
