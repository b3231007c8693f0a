"""Prometheus metrics of one daemon, on its own registry (no process-global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def count_trio_tasks() -> float:
    """Tasks in the running Trio task tree (NaN outside Trio)."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return float("nan")
    count, pending = 0, [root] if root is not None else []
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return float(count)


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass
class Metrics:
    """The daemon's metrics; every part records into the one instance it is given."""

    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.active_calls = Gauge("voicedashd_active_calls", "Calls in progress", registry=r)
        self.sip_requests = Counter(
            "voicedashd_sip_requests", "SIP requests received, by method and response code",
            ["method", "code"], registry=r)
        self.sip_malformed = Counter(
            "voicedashd_sip_malformed", "SIP datagrams or stream messages that did not parse",
            registry=r)
        self.sip_untrusted_limited = Counter(
            "voicedashd_sip_untrusted_limited",
            "SIP messages from untrusted sources not admitted, by reason (rate, transactions) "
            "and action (refused: answered 403; dropped: unparsed, unanswered)",
            ["reason", "action"], registry=r)
        self.sip_untrusted_transactions = Gauge(
            "voicedashd_sip_untrusted_transactions",
            "Live SIP server transactions opened by untrusted sources", registry=r)
        self.sip_tcp_connections = Gauge(
            "voicedashd_sip_tcp_connections", "Accepted SIP/TCP connections open", registry=r)
        self.sip_tcp_refused = Counter(
            "voicedashd_sip_tcp_refused",
            "SIP/TCP connections closed at once, by cap (total, per_source)", ["cap"],
            registry=r)
        self.sip_tcp_idle_closed = Counter(
            "voicedashd_sip_tcp_idle_closed",
            "SIP/TCP connections closed after sip.tcp_idle_timeout without data", registry=r)
        self.sip_accept_errors = Counter(
            "voicedashd_sip_accept_errors",
            "SIP/TCP accepts that failed for lack of resources (EMFILE, ENFILE, ...); the "
            "listener backed off", ["errno"], registry=r)
        self.calls_refused = Counter(
            "voicedashd_calls_refused",
            "INVITEs answered 5xx because the call's resources could not be had, by reason "
            "(rtp_ports, descriptors)", ["reason"], registry=r)
        self.rtp_ports_free = Gauge(
            "voicedashd_rtp_ports_free", "RTP port pairs of media.rtp_ports free to hand out",
            registry=r)
        self.hub_connections = Gauge(
            "voicedashd_hub_connections", "Open WebSocket hub connections", registry=r)
        self.events_published = Counter(
            "voicedashd_events_published", "Call events published, by event name",
            ["event"], registry=r)
        self.calls_ended = Counter(
            "voicedashd_calls_ended",
            "Calls ended, by reason (call_ended's: caller_hangup, bot_hangup, transferred, "
            "media_timeout, error, shutdown, …; interrupted: closed at start after a crash)",
            ["reason"], registry=r)
        self.store_write_seconds = Histogram(
            "voicedashd_store_write_seconds", "Latency of one batched store write",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r)
        self.reloads = Counter(
            "voicedashd_config_reloads", "Configuration reloads, by outcome", ["outcome"],
            registry=r)
        self.voicebot_pipelines = Gauge(
            "voicedashd_voicebot_pipelines", "Voice bot pipelines running", registry=r)
        self.voicebot_errors = Counter(
            "voicedashd_voicebot_pipeline_errors",
            "Voice bot pipelines that failed (the call ended with reason error)", registry=r)
        self.voicebot_latency = Histogram(
            "voicedashd_voicebot_latency_seconds",
            "Voice bot latencies by stage: stt (caller stopped -> final transcript), answer "
            "(transcript -> answer text), tts (text -> audio), response (caller stopped -> "
            "first bot audio)", ["stage"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0),
            registry=r)
        self.speech_wait = Histogram(
            "voicedashd_speech_wait_seconds",
            "Time model work (recognition, synthesis) waited for a free speech worker",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5),
            registry=r)
        self.speech_skipped = Counter(
            "voicedashd_speech_skipped",
            "Interim recognitions skipped because every speech worker was busy", registry=r)
        self.rtp_dropped = Counter(
            "voicedashd_rtp_dropped_packets",
            "Inbound RTP packets dropped by strict RTP, by reason: foreign_source (not from "
            "the call's learnt source), probation (from a source not learnt yet)", ["reason"],
            registry=r)
        for reason in ("foreign_source", "probation"):
            self.rtp_dropped.labels(reason=reason)
        self.webhook_enqueued = Counter(
            "voicedashd_webhook_enqueued",
            "Webhook deliveries enqueued: one per stored event per [[webhooks]] entry wanting it",
            registry=r)
        self.webhook_deliveries = Counter(
            "voicedashd_webhook_deliveries",
            "Webhook deliveries finished, by outcome: delivered (a 2xx answer), failed (no 2xx "
            "within 24 h), removed (its webhook left the config)", ["outcome"], registry=r)
        for outcome in ("delivered", "failed", "removed"):
            self.webhook_deliveries.labels(outcome=outcome)
        self.webhook_attempt_failures = Counter(
            "voicedashd_webhook_attempt_failures",
            "Webhook tries that failed, by reason: status (a non-2xx answer), timeout, "
            "connection", ["reason"], registry=r)
        for reason in ("status", "timeout", "connection"):
            self.webhook_attempt_failures.labels(reason=reason)
        self.webhook_retries = Counter(
            "voicedashd_webhook_retries", "Webhook tries after a delivery's first", registry=r)
        self.webhook_queue_depth = Gauge(
            "voicedashd_webhook_queue_depth", "Webhook deliveries pending in the store",
            registry=r)
        self.asyncio_tasks = Gauge(
            "voicedashd_asyncio_tasks", "Tasks on the asyncio loop that hosts the pipelines",
            registry=r)
        self.trio_tasks = Gauge("voicedashd_trio_tasks", "Trio tasks alive in the daemon",
                                registry=r)
        self.trio_tasks.set_function(count_trio_tasks)

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
