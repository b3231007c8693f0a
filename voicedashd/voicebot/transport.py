"""A Pipecat transport over one call's RTP session (decoded PCM in, paced PCM out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    DataFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from .host import CallEvents, Inbox, Observe, Outbox
from .turns import TurnClock


@dataclass
class PlayedMarkFrame(DataFrame):
    """Behind a prompt's words: reaching the output, they are handed to the RTP sender."""

    played: Callable[[float], None] = lambda queued: None


class RtpInputTransport(BaseInputTransport):
    """Turns the caller's decoded audio (from the Inbox) into InputAudioRawFrames."""

    def __init__(self, params: TransportParams, inbox: Inbox, rate: int) -> None:
        super().__init__(params, name="rtp-in")
        self._inbox = inbox
        self._rate = rate
        self._reader = None

    async def start(self, frame: StartFrame) -> None:
        """Start reading the caller's audio."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        if self._reader is None:
            self._reader = self.create_task(self._read(), "rtp-in-reader")

    async def stop(self, frame: EndFrame) -> None:
        """Stop reading."""
        await self._stop_reader()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop reading."""
        await self._stop_reader()
        await super().cancel(frame)

    async def cleanup(self) -> None:
        """Stop reading (if stop/cancel did not)."""
        await self._stop_reader()
        await super().cleanup()

    async def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await self.cancel_task(reader)

    async def _read(self) -> None:
        while True:
            pcm = await self._inbox.get()
            await self.push_audio_frame(InputAudioRawFrame(pcm, self._rate, 1))


class RtpOutputTransport(BaseOutputTransport):
    """Hands the bot's audio to the Outbox (paced there) and reports what the bot says.

    Pipecat's media sender plays queued frames in order; what reaches this transport's
    write hooks is therefore in playout order: a sentence's announcement (an
    AggregatedTextFrame that will be spoken) comes just before its audio, so that is when
    TtsStarted is sent; the sentence ends when the next one starts or the bot stops
    speaking (end of turn, or an interruption that flushed it).
    """

    def __init__(self, params: TransportParams, outbox: Outbox, events: CallEvents,
                 turns: TurnClock, observe: Observe) -> None:
        super().__init__(params, name="rtp-out")
        self._outbox = outbox
        self._events = events
        self._turns = turns
        self._observe = observe
        self._in_sentence = False

    async def start(self, frame: StartFrame) -> None:
        """Ready to play."""
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        """Play out what is queued; the bot has then finished its sentence."""
        await super().stop(frame)
        self._end_sentence()

    async def cancel(self, frame: CancelFrame) -> None:
        """The call is over mid-sentence: that sentence ends here."""
        await super().cancel(frame)
        self._end_sentence()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Send audio towards the caller, at most a little ahead of real time."""
        waited = self._turns.first_audio()
        if waited is not None:
            self._observe("response", waited)
        await self._outbox.write(frame.audio)
        return True

    async def write_transport_frame(self, frame: Frame) -> None:
        """A sentence is about to be played: the bot starts saying it; or a prompt is played."""
        if isinstance(frame, PlayedMarkFrame):
            self._outbox.mark(frame.played)
        elif (isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame)
                and frame.will_be_spoken and frame.text.strip()):
            self._end_sentence()
            self._in_sentence = True
            self._events.tts_started(frame.text.strip())

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Barge-in drops the audio the RTP sender still holds, too."""
        if isinstance(frame, InterruptionFrame):
            self._outbox.flush()
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame,
                         direction: FrameDirection = FrameDirection.DOWNSTREAM) -> None:
        """Notice the bot stopping (end of what it had to say, or interrupted)."""
        if isinstance(frame, BotStoppedSpeakingFrame) and direction is FrameDirection.DOWNSTREAM:
            self._outbox.end_of_speech()
            self._end_sentence()
        await super().push_frame(frame, direction)

    def _end_sentence(self) -> None:
        if self._in_sentence:
            self._in_sentence = False
            self._events.tts_completed()


class RtpTransport(BaseTransport):
    """The input and output processors of one call's RTP session."""

    def __init__(self, *, inbox: Inbox, outbox: Outbox, events: CallEvents, turns: TurnClock,
                 observe: Observe, rate: int) -> None:
        super().__init__(name="rtp")
        self._params = TransportParams(
            audio_in_enabled=True, audio_in_sample_rate=rate, audio_in_passthrough=True,
            audio_out_enabled=True, audio_out_sample_rate=rate, audio_out_10ms_chunks=4,
            audio_out_end_silence_secs=0)
        self._input = RtpInputTransport(self._params, inbox, rate)
        self._output = RtpOutputTransport(self._params, outbox, events, turns, observe)

    def input(self) -> RtpInputTransport:
        """The processor that produces the caller's audio frames."""
        return self._input

    def output(self) -> RtpOutputTransport:
        """The processor that plays the bot's audio."""
        return self._output

