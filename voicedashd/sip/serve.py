"""Serve SIP: listeners, the endpoint's transactions and the calls nursery."""

from __future__ import annotations

import trio

from ..bus import EventBus
from ..calls import CallManager, advertised_host
from ..livecfg import LiveConfig
from ..media.ports import RtpPortPool
from ..metrics import Metrics
from ..voicebot import CallBot
from .endpoint import SipEndpoint
from .transport import open_transport


async def serve_sip(live: LiveConfig, bus: EventBus, metrics: Metrics,
                    voicebot: CallBot | None = None, *,
                    task_status: trio.TaskStatus[CallManager] = trio.TASK_STATUS_IGNORED
                    ) -> None:
    """Listen for SIP and run calls until cancelled; reports the CallManager when bound."""
    config = live.current
    transport = await open_transport(config.sip.listen)
    low, high = config.media.rtp_ports
    ports = RtpPortPool(config.media.address, low, high)
    async with trio.open_nursery() as sip_nursery, trio.open_nursery() as calls_nursery:
        manager = CallManager(live, bus, metrics, ports, calls_nursery, voicebot=voicebot)
        manager.endpoint = SipEndpoint(transport, manager, sip_nursery, metrics,
                                       advertised_host(config))
        await sip_nursery.start(transport.serve, manager.endpoint.handle)
        task_status.started(manager)
        await trio.sleep_forever()  # the calls nursery stays open for calls yet to come
