"""Serve SIP: the endpoint's transactions on a bound transport, answered by a core."""

from __future__ import annotations

import trio

from ..metrics import Metrics
from .endpoint import Core, SipClient, SipEndpoint
from .transport import Transport


async def serve_sip(transport: Transport, core: Core, client: SipClient, metrics: Metrics, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Take SIP messages from transport until cancelled; requests go to core."""
    async with trio.open_nursery() as nursery:
        endpoint = SipEndpoint(transport, core, nursery, metrics, client)
        await nursery.start(transport.serve, endpoint.handle)
        task_status.started()
