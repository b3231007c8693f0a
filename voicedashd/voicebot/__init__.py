"""The AI voice bot: one Pipecat pipeline per call, on the asyncio loop the bridge opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

# The bridge imports trio_asyncio, which patches asyncio.get_running_loop; it must come before
# anything imports Pipecat (its wait_for2 dependency binds that function at import time).
from . import bridge as _bridge  # noqa: F401
from .prompt import Line, Prompt

__all__ = ["CallBot", "Line", "Prompt"]

if TYPE_CHECKING:
    import trio

    from ..bus import EventBus
    from ..events import CallInfo
    from ..media.session import MediaSession


class CallBot(Protocol):
    """What the call task needs of the voice bot."""

    async def run(self, call: CallInfo, session: MediaSession, bus: EventBus,
                  prompts: trio.MemoryReceiveChannel[Prompt] | None = None) -> None:
        """Talk to the caller (and say each prompt) until cancelled; returns if the bot hangs up."""
        ...
