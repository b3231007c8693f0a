"""The daemon's one nursery: store, SIP, API, hub, signals, systemd notifications."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

import structlog
import trio

from .api.app import serve_api
from .api.deps import ApiDeps
from .auth import Authenticator
from .bus import EventBus
from .calls import serve_calls
from .config import (
    Config,
    ConfigError,
    apply_reload,
    changed_keys,
    config_value,
    load_config,
)
from .heap import settle_heap
from .hub.server import serve_hub
from .livecfg import LiveConfig
from .logs import configure_logging
from .metrics import Metrics
from .readiness import CHECKS, Readiness
from .recordings import serve_retention
from .sdnotify import Notifier, run_watchdog, watchdog_interval
from .sip.endpoint import SipClient
from .sip.serve import serve_sip
from .sip.transport import TcpLimits, open_transport
from .store import Store, open_store
from .voicebot.bridge import serve_voicebot
from .voicebot.summarizer import serve_summaries
from .webhooks import WebhookOutbox, serve_webhooks

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# end_reason of a call that was still up when the previous process died
INTERRUPTED = "interrupted"


async def reload_config(live: LiveConfig, environ: Mapping[str, str], notifier: Notifier,
                        metrics: Metrics) -> bool:
    """Re-read the config file; apply the live keys, keep the restart-only ones, log each."""
    await notifier.reloading()
    try:
        loaded = await trio.to_thread.run_sync(load_config, live.current.path, environ)
    except ConfigError as exc:
        metrics.reloads.labels("error").inc()
        log.error("config_reload_failed", error="; ".join(exc.problems),
                  path=str(live.current.path))
        return False
    finally:
        await notifier.ready()
    running = live.current
    live.replace(apply_reload(running, loaded))
    configure_logging(live.current.log)
    metrics.reloads.labels("ok").inc()
    # What was applied and what was kept are read back from the config now in force.
    for key in changed_keys(live.current, loaded):
        log.warning("config_reload_needs_restart", key=key,
                    running=_shown(config_value(live.current, key)),
                    file=_shown(config_value(loaded, key)))
    log.info("config_reloaded", users=len(live.current.users), tenants=len(live.current.tenants),
             generation=live.generation, applied=changed_keys(running, live.current))
    return True


def _shown(value: object) -> object:
    """A config value as a log field: paths and addresses as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return [_shown(v) for v in value]
    return str(value)


async def _close_interrupted_calls(store: Store, metrics: Metrics) -> None:
    """Close in history the calls a killed process (kill -9, power loss) left without an end."""
    closed = await store.mark_unfinished_calls(INTERRUPTED)
    if closed:
        metrics.calls_ended.labels(INTERRUPTED).inc(closed)
        log.warning("store_unfinished_calls_closed", count=closed, end_reason=INTERRUPTED)


async def serve(config: Config, *, environ: Mapping[str, str] | None = None,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until SIGTERM/SIGINT, then stop gracefully within the grace period."""
    environ = os.environ if environ is None else environ
    configure_logging(config.log)
    live = LiveConfig(config)
    metrics = Metrics()
    readiness = Readiness()
    notifier = Notifier.from_environ(environ)
    with trio.open_signal_receiver(*STOP_SIGNALS, signal.SIGHUP) as signals:
        outbox = WebhookOutbox(lambda: live.current.webhooks, metrics)
        async with notifier, open_store(config.store.path, metrics, outbox) as store:
            await _close_interrupted_calls(store, metrics)
            readiness.probes["store"] = store.check
            readiness.mark_up("store")
            http_shutdown = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(store.run_writer)
                await nursery.start(serve_retention, store, lambda: live.current)
                await nursery.start(serve_webhooks, store, outbox, lambda: live.current.webhooks,
                                    metrics)
                bus = EventBus(store, metrics)
                summaries = await nursery.start(serve_summaries, live, bus, store, environ)
                voicebot = await nursery.start(serve_voicebot, live, metrics, environ)
                # SIP: a bound transport, the calls nursery, and the endpoint dispatching to it.
                sip_transport = await open_transport(
                    config.sip.listen, metrics, lambda: TcpLimits.of(live.current.sip))
                sip_client = SipClient(sip_transport, lambda: live.current.sip)
                calls = await nursery.start(serve_calls, live, bus, metrics, sip_client, voicebot)
                await nursery.start(serve_sip, sip_transport, calls, sip_client, metrics,
                                    lambda: live.current.sip)
                readiness.mark_up("sip")
                authenticator = Authenticator(live, store)
                api_deps = ApiDeps(live=live, store=store, metrics=metrics, readiness=readiness,
                                   auth=authenticator, bus=bus, calls=calls)
                await nursery.start(serve_api, api_deps, http_shutdown)
                readiness.mark_up("api")
                await nursery.start(serve_hub, live, bus, authenticator, store, metrics)
                readiness.mark_up("hub")

                settle_heap()
                await notifier.ready()
                log.info("daemon_ready", sip=str(config.sip.listen), api=str(config.api.listen),
                         hub=str(config.hub.listen), pid=os.getpid())
                interval = watchdog_interval(environ)
                if interval is not None:
                    nursery.start_soon(run_watchdog, notifier, interval)
                task_status.started()

                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await reload_config(live, environ, notifier, metrics)
                        continue
                    log.info("daemon_stopping", signal=signal.Signals(signum).name)
                    break
                await notifier.stopping()
                for part in CHECKS:     # not ready while stopping: balancers stop sending
                    readiness.mark_down(part)
                with trio.move_on_after(live.current.daemon.shutdown_grace) as grace:
                    await calls.stop()
                    await summaries.drain()     # the ended calls' cards, stored before exit
                    http_shutdown.set()
                    await store.flush()
                if grace.cancelled_caught:
                    log.warning("daemon_stop_grace_expired",
                                grace=live.current.daemon.shutdown_grace)
                nursery.cancel_scope.cancel()
    log.info("daemon_stopped")

