"""What the Pipecat side of a call may ask of the Trio side (implemented by the bridge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .prompt import Prompt

T = TypeVar("T")


class Offload(Protocol):
    """Run model inference or blocking work in a speech worker thread, waiting for a free one."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """Call fn(*args) off the event loop and return its result."""
        ...


class TryOffload(Protocol):
    """Like Offload, but only if a speech worker is free at once: None when all are busy."""

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call fn(*args) off the event loop if a worker is idle; else skip it."""
        ...


class RunProcess(Protocol):
    """Run a subprocess under Trio; its stdout, or CalledProcessError if it fails."""

    async def __call__(self, command: list[str], stdin: bytes) -> bytes:
        """Run command with stdin; return what it wrote to stdout."""
        ...


class Inbox(Protocol):
    """The caller's audio (16-bit mono PCM at the pipeline rate), put in by the Trio side."""

    async def get(self) -> bytes:
        """The next chunk of audio, waiting for it."""
        ...


class Outbox(Protocol):
    """The bot's audio on its way to the RTP sender, paced to real time."""

    async def write(self, pcm: bytes) -> None:
        """Hand over speech; returns once it is at most a little ahead of the playout."""
        ...

    def flush(self) -> None:
        """Drop speech not yet played (barge-in)."""
        ...

    def end_of_speech(self) -> None:
        """The bot stopped talking: let the sender finish the utterance."""
        ...

    def mark(self, played: Callable[[float], None]) -> None:
        """Call played(seconds still queued) once everything written so far is handed over."""
        ...


class Prompts(Protocol):
    """Lines the call task asks the bot to say (a transfer's), put in by the Trio side."""

    async def get(self) -> Prompt:
        """The next prompt, waiting for it."""
        ...


class CallEvents(Protocol):
    """Live events of one call, handed to the Trio side for the EventBus."""

    def transcript(self, text: str, *, is_final: bool) -> None:
        """The caller said something (interim guesses, then the final words)."""
        ...

    def tts_started(self, text: str) -> None:
        """The bot started saying a sentence."""
        ...

    def tts_completed(self) -> None:
        """The bot finished (or was interrupted in) what it started."""
        ...


class Observe(Protocol):
    """Record a latency sample (seconds) under a name: stt, answer, tts, response."""

    def __call__(self, name: str, seconds: float) -> None:
        """Record one sample."""
        ...
