"""What the call task may ask the bot to say, and when it has been said."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Line(enum.StrEnum):
    """A line of the call's wording the call task may ask the bot to say."""

    TRANSFER = "transfer"  # voicebot.transfer_line
    TRANSFER_FAILED = "transfer_failed"  # voicebot.transfer_failed_line


@dataclass(frozen=True, slots=True)
class Prompt:
    """Say a line; `played(seconds the RTP sender still holds)` once it is handed over."""

    line: Line
    played: Callable[[float], None] | None = None
