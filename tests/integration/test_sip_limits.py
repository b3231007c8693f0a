"""Bounded resources against the real daemon: an untrusted flood, SIP/TCP caps, no descriptors."""

from __future__ import annotations

import json
import math
import re
import secrets
import sys
from pathlib import Path

import httpx
import trio

from tests.harness import DaemonConfig, free_even_port_range, make_config, run_daemon
from tests.sipp import run_sipp

FLOOD_SOURCE = "127.0.0.5"
FLOOD_RATE = 10_000
FLOOD_SECONDS = 5
REFUSAL = "SIP/2.0 403 Forbidden - too many requests"


def _config(tmp_path: Path, *, sip: str = "", trusted: tuple[str, ...] = ("127.0.0.0/8",),
            rtp_ports: tuple[int, int] | None = None) -> DaemonConfig:
    config = make_config(tmp_path)
    config.trusted = trusted
    if rtp_ports is not None:
        config.rtp_ports = rtp_ports
    rendered = config.render().replace("[sip]\n", f"[sip]\n{sip}\n", 1)
    (tmp_path / "jwt-secret").write_text(secrets.token_urlsafe(48))
    config.path.write_text(rendered)
    return config


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (0 when the labelled series does not exist yet)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if found == labels:
            return float(match.group(2))
    return 0.0


async def scrape(config: DaemonConfig) -> str:
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        response = await http.get("/metrics")
        response.raise_for_status()
        return response.text


async def test_untrusted_flood_is_bounded_while_trusted_calls_complete(tmp_path: Path) -> None:
    cap, rate, burst = 10, 50, 50
    config = _config(tmp_path, trusted=("127.0.0.1/32",),
                     sip=f"untrusted_rate_limit = {rate}\nuntrusted_rate_burst = {burst}\n"
                         f"untrusted_max_transactions = {cap}")
    async with run_daemon(config.path) as daemon:
        # Warm up (first call, first scrape) so what is measured after is the flood's doing.
        assert (await run_sipp(config.sip_port, tmp_path, calls=2, rate=10)).ok
        await daemon.wait_for_count("call_ended", 2)
        await scrape(config)
        rss_before = daemon.rss_kib()
        samples: list[float] = []
        report: dict[str, object] = {}

        async def flood() -> None:
            done = await trio.run_process(
                [sys.executable, "-m", "tests.sip_flood", FLOOD_SOURCE, str(config.sip_port),
                 str(FLOOD_RATE), str(FLOOD_SECONDS)],
                capture_stdout=True, check=True, cwd=Path(__file__).parents[2])
            report.update(json.loads(done.stdout))

        async def sample(stop: trio.Event) -> None:
            while not stop.is_set():
                samples.append(metric(await scrape(config),
                                      "voicedashd_sip_untrusted_transactions"))
                with trio.move_on_after(0.25):
                    await stop.wait()

        with trio.fail_after(60):
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample, stop)
                async with trio.open_nursery() as load:
                    load.start_soon(flood)
                    calls = await run_sipp(config.sip_port, tmp_path, calls=100, rate=20,
                                           timeout=40)
                stop.set()
        assert calls.ok, calls.errors
        await daemon.wait_for_count("call_ended", 102)
        rss_after = daemon.rss_kib()
        text = await scrape(config)

    sent, achieved = int(report["sent"]), float(report["rate"])  # type: ignore[call-overload]
    responses: dict[str, int] = report["responses"]  # type: ignore[assignment]
    print(f"flood: {sent} requests at {achieved:.0f}/s; responses {responses}; "
          f"RSS {rss_before} -> {rss_after} KiB; untrusted transactions {max(samples)}")
    assert achieved >= 0.8 * FLOOD_RATE, f"the flood reached only {achieved:.0f}/s"
    assert sent >= 0.8 * FLOOD_RATE * FLOOD_SECONDS
    # The trusted calls all completed beside it (sipp's verdict above), each hung up by the
    # caller. A few may end before they were confirmed: a datagram the kernel dropped from the
    # flooded socket (sipp's ACK) is not sent again before sipp's BYE comes.
    assert {e["reason"] for e in daemon.events("call_ended")} == {"caller_hangup"}
    assert len(daemon.events("call_started")) >= 92
    # One refusal in the whole flood (it fits in one window), the rest unanswered.
    assert responses.get(REFUSAL) == math.ceil(FLOOD_SECONDS / 30)
    admitted = burst + rate * (FLOOD_SECONDS + 2)
    answered = sum(responses.values())
    # An admitted INVITE is answered 100 and 403 (retransmitted until timer H), OPTIONS 200.
    assert answered <= 8 * admitted, responses
    limited = sum(metric(text, "voicedashd_sip_untrusted_limited_total", reason=r, action=a)
                  for r in ("rate", "transactions") for a in ("refused", "dropped"))
    assert limited >= sent - admitted - 1000  # a datagram the kernel dropped is not counted
    assert metric(text, "voicedashd_sip_untrusted_limited_total",
                  reason="transactions", action="dropped") > 0
    assert samples and max(samples) <= cap
    # Bounded memory: unlimited, ~50k transactions of ~32 s each would take hundreds of MiB.
    assert rss_after - rss_before < 40 * 1024, (rss_before, rss_after)


async def test_tcp_connection_caps_and_idle_timeout(tmp_path: Path) -> None:
    config = _config(tmp_path, trusted=("127.0.0.1/32",),
                     sip='max_tcp_connections = 3\nmax_tcp_connections_per_source = 2\n'
                         'tcp_idle_timeout = "1s"')
    target = ("127.0.0.1", config.sip_port)

    async def connect(source: str) -> trio.SocketStream:
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect(target)
        return trio.SocketStream(sock)

    async def closed_by_daemon(stream: trio.SocketStream, within: float) -> bool:
        with trio.move_on_after(within):
            try:
                return await stream.receive_some(1) == b""
            except trio.BrokenResourceError:
                return True
        return False

    async with run_daemon(config.path):
        with trio.fail_after(30):
            a1, a2 = await connect("127.0.0.6"), await connect("127.0.0.6")
            a3 = await connect("127.0.0.6")  # third from one source: over the per-source cap
            assert await closed_by_daemon(a3, 2)
            b1 = await connect("127.0.0.7")
            b2 = await connect("127.0.0.7")  # fourth in all: over the total cap
            assert await closed_by_daemon(b2, 2)
            pbx = await connect("127.0.0.1")  # trusted: never refused
            await pbx.send_all(b"\r\n\r\n")
            text = await scrape(config)
            assert metric(text, "voicedashd_sip_tcp_refused_total", cap="per_source") == 1
            assert metric(text, "voicedashd_sip_tcp_refused_total", cap="total") == 1
            assert metric(text, "voicedashd_sip_tcp_connections") == 4
            # Silent connections are closed after tcp_idle_timeout.
            for stream in (a1, a2, b1, pbx):
                assert await closed_by_daemon(stream, 5)
            text = await scrape(config)
            assert metric(text, "voicedashd_sip_tcp_idle_closed_total") == 4
            assert metric(text, "voicedashd_sip_tcp_connections") == 0
            # Room again: a new connection is served (an OPTIONS answered over it).
            again = await connect("127.0.0.6")
            port = again.socket.getsockname()[1]
            await again.send_all(
                (f"OPTIONS sip:1001@127.0.0.1:{config.sip_port} SIP/2.0\r\n"
                 f"Via: SIP/2.0/TCP 127.0.0.6:{port};branch=z9hG4bKtcpcap\r\n"
                 "From: <sip:probe@127.0.0.6>;tag=p1\r\nTo: <sip:1001@acme.example>\r\n"
                 "Call-ID: tcpcap\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                 "Content-Length: 0\r\n\r\n").encode())
            assert (await again.receive_some(65535)).startswith(b"SIP/2.0 200 OK")
            await again.aclose()
            for stream in (a1, a2, a3, b1, b2, pbx):
                await stream.aclose()


async def test_out_of_descriptors_refuses_calls_and_leaks_nothing(tmp_path: Path) -> None:
    low, high = free_even_port_range(400)
    pairs = len(range(low, high, 2))
    config = _config(tmp_path, rtp_ports=(low, high))
    async with run_daemon(config.path) as daemon:
        warm = await run_sipp(config.sip_port, tmp_path, scenario="answered_or_busy", calls=2,
                              rate=10)
        assert warm.ok, warm.errors
        await daemon.wait_for_count("call_ended", 2)
        await scrape(config)
        # Room for a few calls' RTP sockets, far fewer than the calls about to come at once.
        daemon.limit_open_files(spare=10)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                flood_done: list[object] = []

                async def flood() -> None:
                    flood_done.append(await run_sipp(
                        config.sip_port, tmp_path, scenario="answered_or_busy", calls=30,
                        rate=30, timeout=40))

                nursery.start_soon(flood)
                await daemon.wait_for_log("call_resources_unavailable", timeout=20)
                # Out of descriptors, a SIP/TCP connection waits in the backlog: the accept
                # loop must back off (not spin) and serve it once descriptors are back.
                waiting = trio.socket.socket()
                await waiting.connect(("127.0.0.1", config.sip_port))
        flood_result = flood_done[0]
        assert flood_result.ok, flood_result.errors  # type: ignore[attr-defined]
        started = len(daemon.events("call_started"))
        await daemon.wait_for_count("call_ended", started)
        text = await scrape(config)
        refused = metric(text, "voicedashd_calls_refused_total", reason="descriptors")
        answered = metric(text, "voicedashd_sip_requests_total", method="INVITE", code="200")
        busy = metric(text, "voicedashd_sip_requests_total", method="INVITE", code="503")
        print(f"descriptor flood: {answered - 2:.0f} answered, {busy:.0f} refused 503; "
              f"accept errors {metric_sum(text, 'voicedashd_sip_accept_errors_total')}")
        assert refused >= 1 and busy == refused
        assert answered + busy == 32
        assert started == answered
        assert metric(text, "voicedashd_active_calls") == 0
        assert metric(text, "voicedashd_rtp_ports_free") == pairs
        # Every descriptor a call needs is held before it is published: an answered call
        # never fails for want of one afterwards.
        assert {e["reason"] for e in daemon.events("call_ended")} == {"caller_hangup"}
        accept_errors = metric_sum(text, "voicedashd_sip_accept_errors_total")
        assert 1 <= accept_errors <= 40, accept_errors
        async with httpx.AsyncClient(base_url=config.api_url) as http:
            login = await http.post("/api/auth/login", json={
                "extension": "1001", "tenant": "acme", "password": config.users[0].password})
            token = login.json()["access_token"]
            active = await http.get("/api/calls/active",
                                    headers={"Authorization": f"Bearer {token}"})
        assert active.status_code == 200 and active.json() == [], active.text
        # The waiting connection was accepted once descriptors came back.
        stream = trio.SocketStream(waiting)
        await stream.send_all(
            (f"OPTIONS sip:1001@127.0.0.1:{config.sip_port} SIP/2.0\r\n"
             f"Via: SIP/2.0/TCP 127.0.0.1:{waiting.getsockname()[1]};branch=z9hG4bKwait\r\n"
             "From: <sip:probe@127.0.0.1>;tag=w1\r\nTo: <sip:1001@acme.example>\r\n"
             "Call-ID: waiting\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
             "Content-Length: 0\r\n\r\n").encode())
        with trio.fail_after(5):
            assert (await stream.receive_some(65535)).startswith(b"SIP/2.0 200 OK")
        await stream.aclose()
        # Still under the lowered limit, new calls go through.
        after = await run_sipp(config.sip_port, tmp_path, calls=5, rate=10)
        assert after.ok, after.errors
        await daemon.wait_for_count("call_ended", started + 5)


def metric_sum(text: str, name: str) -> float:
    """The sum of every series of a metric."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name))
