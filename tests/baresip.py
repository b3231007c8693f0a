"""baresip (Debian's 1.0) as a real SIP phone in tests: a caller driven over its TCP control port.

Each `run_baresip` starts `baresip -f DIR` with its own config directory: SIP and RTP bound
to 127.0.0.1 only (`net_interface`, so its SDP names 127.0.0.1 and nothing is sent anywhere
else), no sound card (the `aufile` module plays a WAV file as the microphone; no player
module is loaded, and the `sndfile` filter writes what it decodes from us to a WAV file), the
codecs the test offers, and the `ctrl_tcp` module: netstring-framed JSON commands (`dial`,
`hangup`, `hold`, `resume`, `sndcode`) and the UA's events (`CALL_ESTABLISHED`,
`CALL_CLOSED`, ...). The process is killed when the block exits, however it exits.

baresip 1.0 ends a call when its WAV source runs out ("end of file"): the caller's file is
padded with silence to outlast the test (`wav_for_call`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import trio

from tests.harness import free_even_port_range, free_ports

BARESIP = "baresip"
MODULES = Path("/usr/lib/baresip/modules")
START_TIMEOUT = 10  # seconds until the control port answers
COMMAND_TIMEOUT = 5
# baresip 1.0's account parser takes 8000 Hz for a codec named without its rate.
CODEC_NAMES = {"PCMU": "PCMU/8000/1", "PCMA": "PCMA/8000/1", "G722": "G722/16000/1"}


class BaresipError(AssertionError):
    """baresip did not start, or refused a command."""


@dataclass(frozen=True, slots=True)
class BaresipSetup:
    """What one baresip instance plays, offers and where it listens."""

    directory: Path
    source: Path  # 16 kHz mono 16-bit WAV played as the caller's voice
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "G722")
    user: str = "caller"
    # The address its SDP names. Another loopback address than 127.0.0.1 makes a phone whose
    # SDP is not where its RTP comes from (its RTP socket is bound to 0.0.0.0).
    media_address: str = "127.0.0.1"

    @property
    def source_rate(self) -> int:
        """The WAV's sample rate; baresip resamples to the codec's when they differ (poorly:
        a source at the codec's own rate keeps the caller's speech clean)."""
        with wave.open(str(self.source)) as header:
            return header.getframerate()

    def config_text(self, sip_port: int, ctrl_port: int, rtp_ports: tuple[int, int]) -> str:
        """The `config` file: loopback only, WAV in, decoded audio dumped to the directory."""
        modules = ["g711.so", "g722.so", "aufile.so", "sndfile.so"]
        lines = [
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{sip_port}",
            # Else its SDP names whatever address it guesses (192.0.2.2 was seen).
            f"net_interface {self.media_address}",
            "call_local_timeout 20",
            "call_max_calls 2",
            "audio_buffer 20-160",
            f"audio_source aufile,{self.source}",
            f"ausrc_srate {self.source_rate}",
            "ausrc_channels 1",
            f"rtp_ports {rtp_ports[0]}-{rtp_ports[1]}",
            "jitter_buffer_delay 1-10",
            "rtcp_mux no",
            f"module_path {MODULES}",
            *(f"module {name}" for name in modules),
            "module_tmp account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            "statmode_default off",  # no status line every 100 ms on stdout
            f"ctrl_tcp_listen 127.0.0.1:{ctrl_port}",
            f"snd_path {self.directory}",
        ]
        return "\n".join(lines) + "\n"

    def accounts_text(self) -> str:
        """The `accounts` file: one account that never registers and offers only `codecs`."""
        codecs = ",".join(CODEC_NAMES.get(name, name) for name in self.codecs)
        return (f"<sip:{self.user}@127.0.0.1>;regint=0;answermode=manual;"
                f"audio_codecs={codecs}\n")


class Baresip:
    """A running baresip: its control connection, the events it sent, its stdout."""

    def __init__(self, process: trio.Process, control: trio.SocketStream,
                 setup: BaresipSetup, output: list[str]) -> None:
        self.process = process
        self.setup = setup
        self.events: list[dict[str, Any]] = []
        self.output = output  # its stdout lines, filled by run_baresip
        self._control = control
        self._responses: dict[str, dict[str, Any]] = {}
        self._changed = trio.Event()

    # -- commands ----------------------------------------------------------------------

    async def command(self, command: str, params: str = "") -> str:
        """Run one ctrl_tcp command; return its response text, raise BaresipError if refused."""
        token = secrets.token_hex(4)
        message: dict[str, str] = {"command": command, "token": token}
        if params:
            message["params"] = params
        body = json.dumps(message).encode()
        await self._control.send_all(b"%d:%s," % (len(body), body))
        with trio.fail_after(COMMAND_TIMEOUT):
            while token not in self._responses:
                await self._changed.wait()
        response = self._responses.pop(token)
        if not response.get("ok"):
            raise BaresipError(f"baresip refused {command} {params}: {response.get('data')}")
        return str(response.get("data", ""))

    async def dial(self, uri: str) -> None:
        """Call a SIP URI (add `;transport=tcp` for TCP)."""
        await self.command("dial", uri)

    async def hang_up(self) -> None:
        """Hang up the current call (BYE)."""
        await self.command("hangup")

    async def hold(self) -> None:
        """Put the current call on hold (re-INVITE, a=sendonly)."""
        await self.command("hold")

    async def resume(self) -> None:
        """Take the current call off hold (re-INVITE, a=sendrecv)."""
        await self.command("resume")

    async def send_digits(self, digits: str) -> None:
        """Press keys on the current call: RFC 4733 telephone-events."""
        await self.command("sndcode", digits)

    async def packets_received(self) -> int:
        """RTP packets received from the peer so far (`audio_debug`'s RTCP member count).

        baresip 1.0 drops its decode filters (the recording) on a re-INVITE, so after hold
        and resume this count is what says our audio arrives.
        """
        # No member line yet: nothing has arrived.
        counts = re.findall(r"\brcvd=(\d+)", await self.command("audio_debug"))
        return sum(int(count) for count in counts)

    # -- events ------------------------------------------------------------------------

    async def wait_event(self, kind: str, timeout: float = 15, start: int = 0
                         ) -> dict[str, Any]:
        """The first UA event of this type (CALL_ESTABLISHED, CALL_CLOSED, ...) from `start`."""
        with trio.fail_after(timeout):
            while True:
                for event in self.events[start:]:
                    if event.get("type") == kind:
                        return event
                await self._changed.wait()

    def seen(self, kind: str) -> list[dict[str, Any]]:
        """Every UA event of this type so far."""
        return [event for event in self.events if event.get("type") == kind]

    def dump(self) -> str:
        """The last lines baresip printed, for assertion messages."""
        return "\n".join(self.output[-60:])

    # -- what it heard -----------------------------------------------------------------

    def recording(self) -> tuple[np.ndarray, int]:
        """What baresip decoded from our RTP so far: samples and their rate.

        The sndfile filter writes the WAV header's sizes only when the call closes, so the
        header is read by hand and the samples from behind the `data` chunk header, whatever
        size it says.
        """
        files = sorted(self.setup.directory.glob("dump-*-dec.wav"))
        if not files:
            raise BaresipError(f"baresip recorded nothing in {self.setup.directory}")
        data = files[-1].read_bytes()
        fmt = data.index(b"fmt ")  # RIFF chunk: id, size, format, channels, rate (LE)
        rate = int.from_bytes(data[fmt + 12:fmt + 16], "little")
        start = data.index(b"data") + 8
        usable = (len(data) - start) // 2 * 2
        return np.frombuffer(data[start:start + usable], dtype=np.int16), rate

    # -- readers -----------------------------------------------------------------------

    async def _read_control(self) -> None:
        buffer = b""
        async for chunk in self._control:
            buffer += chunk
            while b":" in buffer:
                length, _, rest = buffer.partition(b":")
                size = int(length)
                if len(rest) < size + 1:
                    break
                message = json.loads(rest[:size])
                buffer = rest[size + 1:]
                if message.get("response"):
                    self._responses[str(message.get("token"))] = message
                elif message.get("event"):
                    self.events.append(message)
                self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def run_baresip(setup: BaresipSetup) -> AsyncIterator[Baresip]:
    """Start baresip on its own config directory; kill it when the block exits."""
    program = shutil.which(BARESIP)
    if program is None:
        raise BaresipError("baresip not found: install the Debian package baresip "
                           "(scripts/test does)")
    setup.directory.mkdir(parents=True, exist_ok=True)
    sip_port, ctrl_port = free_ports(2)
    rtp = free_even_port_range(10)
    (setup.directory / "config").write_text(setup.config_text(sip_port, ctrl_port, rtp))
    (setup.directory / "accounts").write_text(setup.accounts_text())
    (setup.directory / "contacts").write_text("")
    process = await trio.lowlevel.open_process(
        [program, "-f", str(setup.directory)], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(setup.directory)})
    try:
        async with trio.open_nursery() as nursery:
            output: list[str] = []
            nursery.start_soon(_read_output, process, output)
            async with await _connect(process, ctrl_port, output) as control:
                phone = Baresip(process, control, setup, output)
                nursery.start_soon(phone._read_control)
                yield phone
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


async def _read_output(process: trio.Process, output: list[str]) -> None:
    """Keep baresip's stdout lines (its log), for assertion messages."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        output += [line.decode(errors="replace") for line in lines]


async def _connect(process: trio.Process, port: int, output: list[str]) -> trio.SocketStream:
    """Connect to the control port once baresip listens on it (bounded)."""
    with trio.move_on_after(START_TIMEOUT):
        while process.returncode is None:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)  # nothing announces the listener; poll briefly
    raise BaresipError(f"baresip did not open its control port 127.0.0.1:{port} "
                       f"(exit code {process.returncode}):\n" + "\n".join(output[-30:]))


def wav_for_call(pcm: np.ndarray, rate: int, path: Path, *, lead: float, seconds: float
                 ) -> Path:
    """The caller's voice for baresip's aufile source: `lead` s of silence, the speech, then
    silence up to `seconds` (the source running out would end the call); mono 16-bit."""
    start = int(lead * rate)
    samples = np.zeros(max(int(seconds * rate), start + len(pcm)), dtype=np.int16)
    samples[start:start + len(pcm)] = pcm
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path
