"""A paced UDP SIP flood (OPTIONS and INVITEs, each a new transaction) that reports what came back.

Run as `python -m tests.sip_flood SOURCE_IP TARGET_PORT RATE SECONDS`; prints one JSON object:
how many requests were sent, the rate achieved, and the responses by status line. Bounded: it
sends at most RATE * SECONDS datagrams, only to 127.0.0.1, and stops after SECONDS.
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import time

TARGET_HOST = "127.0.0.1"
BATCH = 50  # datagrams sent back to back between clock reads

_SDP = ("v=0\r\no=- 1 1 IN IP4 {src}\r\ns=-\r\nc=IN IP4 {src}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def templates(source: str, local_port: int, target_port: int) -> tuple[str, str]:
    """An OPTIONS and an INVITE with {n} where the branch and Call-ID differ."""
    head = (f"{{method}} sip:1001@{TARGET_HOST}:{target_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{local_port};branch=z9hG4bKflood{{{{n}}}};rport\r\n"
            f"From: <sip:flood@{source}>;tag=f{{{{n}}}}\r\n"
            "To: <sip:1001@acme.example>\r\n"
            "Call-ID: flood-{{n}}\r\nCSeq: 1 {method}\r\n"
            f"Contact: <sip:flood@{source}:{local_port}>\r\nMax-Forwards: 70\r\n")
    sdp = _SDP.format(src=source)
    options = head.format(method="OPTIONS") + "Content-Length: 0\r\n\r\n"
    invite = (head.format(method="INVITE") + "Content-Type: application/sdp\r\n"
              f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")
    return options, invite


def flood(source: str, target_port: int, rate: float, seconds: float) -> dict[str, object]:
    """Send rate requests per second for seconds; count the responses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    options, invite = templates(source, sock.getsockname()[1], target_port)
    target = (TARGET_HOST, target_port)
    responses: collections.Counter[str] = collections.Counter()
    total = int(rate * seconds)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    while sent < total:
        now = time.monotonic()
        if now >= end:
            break
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            for _ in range(min(BATCH, due - sent)):
                text = invite if sent % 2 else options
                try:
                    sock.sendto(text.format(n=sent).encode(), target)
                except BlockingIOError:
                    break
                sent += 1
            _drain(sock, responses)
        time.sleep(0.0005)
    elapsed = time.monotonic() - start
    # Answers to the last requests (and 403 retransmissions) still on their way.
    linger = time.monotonic() + 1.0
    while time.monotonic() < linger:
        _drain(sock, responses)
        time.sleep(0.01)
    sock.close()
    return {"sent": sent, "seconds": elapsed, "rate": sent / elapsed,
            "responses": dict(responses)}


def _drain(sock: socket.socket, responses: collections.Counter[str]) -> None:
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        responses[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1


def main() -> None:
    """Parse the arguments, flood, print the report."""
    source, port, rate, seconds = sys.argv[1:5]
    if not source.startswith("127."):
        raise SystemExit("the flood only goes between loopback addresses")
    print(json.dumps(flood(source, int(port), float(rate), float(seconds))))


if __name__ == "__main__":
    main()
