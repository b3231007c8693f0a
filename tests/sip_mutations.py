"""Generated SIP input for fuzzing: valid messages of every kind we meet, and their mutations.

One generator serves the unit tests (tests/unit/test_sip_fuzz.py: hypothesis drives it, and a
small seeded run of the whole input path) and the benchmark `scripts/fuzz-sip` (a million
seeded cases). Everything here is a pure function of a `random.Random`, so a seed replays.

A case is what one peer sends: one or more messages, over UDP (one datagram each) or TCP (one
stream cut into random chunks). Messages that belong to a dialog carry `TO_TAG` where our
local tag goes; the input path replaces it with the tag of the dialog it opened before.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TO_TAG = b"@@to-tag@@"
CALL_ID = b"@@call-id@@"

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
HOLD_SDP = SDP.replace(b"a=sendrecv", b"a=sendonly")

# Messages from the RFC 4475 style seeds of the first fuzz tests: odd but parseable forms.
SEEDS = [
    b"INVITE sip:1004@pbx.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice \\"A\\"" <sip:alice@example.com>;tag=1928301774\r\n'
    b"To: <sip:1004@pbx.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Diversion: <sip:1000@pbx>;reason=no-answer, <tel:+4930123>;reason=unconditional\r\n"
    b"History-Info: <sip:1000@pbx>;index=1, <sip:bot@h?Reason=SIP%3Bcause%3D302>;index=1.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP,
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK1, SIP/2.0/UDP h;branch=z9hG4bK2\r\n"
    b"f: <sip:a@example.com>;tag=1\r\nt: sip:b@example.com;tag=2\r\n"
    b"i: r1\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"OPTIONS tel:+1-201-555-0123;phone-context=x SIP/2.0\r\n"
    b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n"
    b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    b"from: caller<sip:caller@example.com>;tag=323\r\n"
    b"Call-ID: opt\r\ncseq: 0009\r\n  OPTIONS\r\nRequire: foo\r\n\r\n",
]
TOKENS = [
    b"\r\n", b"\r\n ", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b'"', b"\\", b"<", b">",
    b"%", b"%00", b"\x00", b"\xff", b"\xc3", b"=", b"@", b"[", b"]", b"?", b"&",
    b"Content-Length: ", b"l: 99999999999999999999", b"-1", b"2147483648", b"SIP/2.0",
    b"SIP/7.0", b"sip:", b"tel:", b"Via: ", b"CSeq: 1 ", b"To: ", b"\r\n\r\n", b"0.0.0.0",
    b"m=audio 0 RTP/AVP ", b"a=rtpmap:", b";tag=", b";index=1.", b";received=", b";rport",
    b";rport=99999", b";maddr=hang.invalid", b"[::1]", b"hang.invalid", b";lr", b"sips:",
]
BAD_NUMBERS = [
    b"-1", b"0", b"2147483648", b"99999999999999999999999", b"1.5", b"0x10", b"", b" ",
    b"\xd9\xa3", b"1e3", b"+7", b"00000000000000000000001", b"65536", b"4294967296",
]
BAD_UTF8 = [b"\xc3\x28", b"\xff\xfe", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\xc0\xaf",
            b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80"]
BAD_SDP_LINES = [
    b"c=IN IP4 hang.invalid", b"c=IN IP6 192.0.2.1", b"c=IN IP4 ::1", b"c=IN IP4",
    b"c=IN IP4 999.1.1.1", b"c=IN IP4 0.0.0.0", b"c=IN IP4 192.0.2.1/127/3", b"c=XX IP4 1.2.3.4",
    b"m=audio 99999 RTP/AVP 0", b"m=audio -1 RTP/AVP 0", b"m=audio 0 RTP/AVP 0",
    b"m=audio 4000/2 RTP/AVP 0", b"m=audio 4000 RTP/SAVP 0", b"m=audio 4000 RTP/AVP",
    b"m=video 4000 RTP/AVP 96", b"m=audio 4000 RTP/AVP 128 300 x",
    b"a=rtpmap:0 PCMU", b"a=rtpmap:999 PCMU/8000", b"a=rtpmap:0 PCMU/0",
    b"a=rtpmap:101 telephone-event/99999999999", b"a=ptime:0", b"a=ptime:-5",
    b"a=ptime:99999999", b"a=fmtp:", b"a=fmtp:x y", b"a=inactive", b"a=recvonly", b"v=1",
    b"o=", b"s=", b"x", b"=", b"a=rtpmap:0 PCMU/8000/99", b"a=rtpmap:0 PCMA/16000",
]


@dataclass(frozen=True, slots=True)
class Case:
    """What one peer sends: messages over UDP (datagrams) or TCP (a stream in chunks)."""

    transport: str  # "UDP" or "TCP"
    messages: tuple[bytes, ...]
    chunks: tuple[int, ...] = ()  # TCP: sizes the stream is cut into (the rest comes last)
    label: str = ""


# --- valid messages ---------------------------------------------------------------------------


def _request(method: str, *, transport: str, branch: str, cseq: int, to_tag: bool,
             body: bytes = b"", extra: bytes = b"", cseq_method: str | None = None) -> bytes:
    """A request in the call CALL_ID from the PBX at 192.0.2.10 (tags filled in later)."""
    to = b"<sip:1001@acme.example>" + (b";tag=" + TO_TAG if to_tag else b"")
    head = (
        f"{method} sip:1001@127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 192.0.2.10:5060;branch=z9hG4bK{branch}-"
    ).encode() + CALL_ID + (
        b";rport\r\nMax-Forwards: 70\r\n"
        b'From: "Alice Caller" <sip:5551234@pbx.example>;tag=from1\r\n'
    ) + b"To: " + to + b"\r\nCall-ID: " + CALL_ID + (
        f"\r\nCSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:5551234@192.0.2.10:5060>\r\n"
    ).encode() + extra
    if body:
        head += b"Content-Type: application/sdp\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _response(status: int, reason: str, *, method: str, branch: str, cseq: int) -> bytes:
    """A response to one of our requests (our BYE), or to a request we never sent."""
    return (
        f"SIP/2.0 {status} {reason}\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport=5070;received=127.0.0.1\r\n"
        f"From: <sip:1001@acme.example>;tag=local\r\nTo: <sip:5551234@pbx.example>;tag=from1\r\n"
        f"Call-ID: fuzz-response\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


ROUTES = (b"Record-Route: <sip:pbx.example;lr>, <sip:192.0.2.20:5080;lr>\r\n"
          b"Diversion: <sip:1004@acme.example>;reason=no-answer\r\n")


def dialog_messages(rng: random.Random, transport: str) -> list[bytes]:
    """A valid call, as the PBX sends it: INVITE and what may follow in its dialog."""
    invite = _request("INVITE", transport=transport, branch="inv", cseq=1, to_tag=False,
                      body=SDP, extra=ROUTES if rng.random() < 0.5 else b"")
    follow_ups = [
        lambda: _request("ACK", transport=transport, branch="ack", cseq=1, to_tag=True),
        lambda: _request("BYE", transport=transport, branch="bye", cseq=3, to_tag=True),
        lambda: _request("CANCEL", transport=transport, branch="inv", cseq=1, to_tag=False),
        lambda: _request("INVITE", transport=transport, branch="re", cseq=2, to_tag=True,
                         body=rng.choice([SDP, HOLD_SDP, b""])),
        lambda: invite,  # a retransmission
        lambda: _request("OPTIONS", transport=transport, branch="opt", cseq=4, to_tag=True),
        lambda: _request("INFO", transport=transport, branch="info", cseq=5, to_tag=True),
        lambda: _request("BYE", transport=transport, branch="bye2", cseq=1, to_tag=True),
    ]
    chosen = [rng.choice(follow_ups)() for _ in range(rng.randint(0, 4))]
    return [invite, *chosen]


def single_message(rng: random.Random, transport: str) -> bytes:
    """One message outside any dialog: a request, a response, or a seed."""
    kind = rng.randrange(8)
    if kind == 0:
        return _request("OPTIONS", transport=transport, branch=f"o{rng.randrange(9)}", cseq=1,
                        to_tag=False)
    if kind == 1:
        return _request("BYE", transport=transport, branch="b", cseq=2, to_tag=False)
    if kind == 2:
        status, reason = rng.choice([(100, "Trying"), (200, "OK"), (481, "Gone"), (503, "X")])
        return _response(status, reason, method=rng.choice(["BYE", "INVITE", "OPTIONS"]),
                         branch=rng.choice(["z9hG4bKours", "nobranch", "z9hG4bK" + "9" * 40]),
                         cseq=rng.randrange(1, 5))
    if kind == 3:
        return _request("REGISTER", transport=transport, branch="r", cseq=1, to_tag=False)
    if kind == 4:
        return _request("INVITE", transport=transport, branch="i", cseq=1, to_tag=False,
                        body=SDP, extra=b"Require: 100rel\r\n" if rng.random() < 0.3 else b"")
    return rng.choice(SEEDS)


# --- mutations --------------------------------------------------------------------------------


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body if sep else b""


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _fix_length(lines: list[bytes], body: bytes) -> list[bytes]:
    return [b"Content-Length: " + str(len(body)).encode() if line.startswith(b"Content-Length:")
            else line for line in lines]


def _bytes(rng: random.Random, data: bytearray) -> None:
    pos = rng.randrange(len(data) + 1)
    action = rng.randrange(5)
    if action == 0:
        data[pos:pos] = rng.randbytes(rng.randint(1, 8))
    elif action == 1:
        del data[pos:pos + rng.randint(1, 40)]
    elif action == 2 and pos < len(data):
        data[pos] = rng.randrange(256)
    elif action == 3:
        data[pos:pos] = rng.choice(TOKENS)
    else:
        start = data.rfind(b"\r\n", 0, pos) + 2
        end = data.find(b"\r\n", pos)
        if end != -1 and start <= end:
            data[end:end] = b"\r\n" + data[start:end]


def _truncate_header(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    index = rng.randrange(len(lines))
    lines[index] = lines[index][:rng.randrange(len(lines[index]) + 1)]
    return _join(lines, body)


def _drop_header(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    if len(lines) > 1:
        del lines[rng.randrange(1, len(lines))]
    return _join(lines, body)


def _duplicate_header(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    if len(lines) > 1:
        index = rng.randrange(1, len(lines))
        lines.insert(rng.randrange(1, len(lines) + 1), lines[index])
    return _join(lines, body)


def _huge_value(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    index = rng.randrange(len(lines))
    size = rng.choice([300, 4000, 70000])
    filler = rng.choice([b"a", b";p=1", b",", b" ", b"<sip:x@y>,", b"%41", b"\\\""])
    lines[index] += filler * (size // len(filler))
    return _join(lines, body)


def _bad_number(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    numeric = [i for i, line in enumerate(lines) if line.split(b":", 1)[0].lower() in (
        b"cseq", b"content-length", b"max-forwards", b"l", b"expires", b"via")]
    if numeric:
        index = rng.choice(numeric)
        name, _, value = lines[index].partition(b":")
        bad = rng.choice(BAD_NUMBERS)
        if name.lower() == b"cseq":
            value = b" " + bad + b" " + value.split()[-1] if value.split() else bad
        elif name.lower() == b"via":
            value = value.replace(b":5060", b":" + bad, 1).replace(b"rport", b"rport=" + bad, 1)
        else:
            value = b" " + bad
        lines[index] = name + b":" + value
    return _join(lines, body)


def _bad_utf8(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    index = rng.randrange(len(lines))
    pos = rng.randrange(len(lines[index]) + 1)
    lines[index] = lines[index][:pos] + rng.choice(BAD_UTF8) + lines[index][pos:]
    return _join(lines, body)


def _bad_sdp(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    sdp = (body or SDP).split(b"\r\n")
    for _ in range(rng.randint(1, 3)):
        if not sdp:
            sdp.append(b"")
        choice = rng.randrange(4)
        index = rng.randrange(len(sdp))
        if choice == 0:
            sdp[index] = rng.choice(BAD_SDP_LINES)
        elif choice == 1:
            sdp.insert(index, rng.choice(BAD_SDP_LINES))
        elif choice == 2:
            del sdp[index]
        else:
            sdp[index] = sdp[index][:rng.randrange(len(sdp[index]) + 1)]
    new_body = b"\r\n".join(sdp)
    if not any(line.lower().startswith(b"content-type") for line in lines):
        lines.insert(len(lines), b"Content-Type: application/sdp")
    return _join(_fix_length(lines, new_body) if rng.random() < 0.9 else lines, new_body)


def _bad_via(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    vias = [i for i, line in enumerate(lines) if line.lower().startswith((b"via:", b"v:"))]
    if vias:
        index = rng.choice(vias)
        extra = rng.choice([b";received=127.0.0.3", b";received=hang.invalid", b";rport=1",
                            b";rport=0", b";rport=abc", b";maddr=127.0.0.3", b";branch=",
                            b";received", b", SIP/2.0/UDP hang.invalid", b";;", b";rport;rport"])
        lines[index] += extra
        if rng.random() < 0.3:
            lines[index] = lines[index].replace(b"192.0.2.10", rng.choice(
                [b"hang.invalid", b"[::1]", b"[::1", b"::1", b"", b"127.0.0.3"]))
    return _join(lines, body)


def _bad_routing(rng: random.Random, lines: list[bytes], body: bytes) -> bytes:
    value = rng.choice([b"garbage", b"<sip:", b"<tel:+1>", b"<sip:hang.invalid>", b"<>",
                        b"<sip:[::1]:99999;lr>", b"<sip:a@b;lr>;x=\"", b"sip:x, ,",
                        b"<sips:host:0>", b"<http://x>", b"<sip:%ff%00@host>"])
    name = rng.choice([b"Record-Route", b"Contact", b"Route", b"From", b"To", b"Diversion",
                       b"History-Info"])
    lines.insert(rng.randrange(1, len(lines) + 1) if len(lines) > 1 else 1, name + b": " + value)
    return _join(lines, body)


_LINE_MUTATIONS: list[Callable[[random.Random, list[bytes], bytes], bytes]] = [
    _truncate_header, _drop_header, _duplicate_header, _huge_value, _bad_number, _bad_utf8,
    _bad_sdp, _bad_via, _bad_routing,
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Apply one to four mutations: byte-level, or header, number, encoding, SDP, Via, URI."""
    for _ in range(rng.randint(1, 4)):
        if not data or rng.random() < 0.35:
            buffer = bytearray(data)
            _bytes(rng, buffer)
            data = bytes(buffer)
        else:
            lines, body = _lines(data)
            data = rng.choice(_LINE_MUTATIONS)(rng, lines, body)
    return data


def random_bytes(rng: random.Random) -> bytes:
    """Random bytes, now and then starting like a SIP message."""
    prefix = rng.choice([b"", b"", b"INVITE sip:x SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n"])
    return prefix + rng.randbytes(rng.randint(1, 1400))


def _chunks(rng: random.Random, size: int) -> tuple[int, ...]:
    cuts: list[int] = []
    while size > 0 and len(cuts) < 30:
        cut = rng.choice([1, 2, 3, rng.randint(1, 64), rng.randint(1, 1500)])
        cuts.append(cut)
        size -= cut
    return tuple(cuts)


def case(rng: random.Random) -> Case:
    """One generated case: mostly mutated dialogs and messages, some valid, some random."""
    transport = "TCP" if rng.random() < 0.25 else "UDP"
    roll = rng.random()
    if roll < 0.05:
        return Case(transport, (random_bytes(rng),), label="random")
    if roll < 0.55:
        messages = dialog_messages(rng, transport)
        label = "dialog"
    else:
        messages = [single_message(rng, transport)]
        label = "single"
    if rng.random() < 0.9:  # most cases are mutated in one of their messages, some in several
        for _ in range(1 if rng.random() < 0.8 else len(messages)):
            index = rng.randrange(len(messages))
            messages[index] = mutate(rng, messages[index])
        label += "-mutated"
    if transport == "TCP":
        return Case(transport, tuple(messages), _chunks(rng, sum(map(len, messages))),
                    label=label)
    return Case(transport, tuple(messages), label=label)


def cases(seed: int) -> Iterator[Case]:
    """Cases from one seed, without end."""
    rng = random.Random(seed)
    while True:
        yield case(rng)
