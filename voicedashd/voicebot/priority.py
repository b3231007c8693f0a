"""Speech model work yields the CPU to the event loop that paces every call's RTP.

Recognition and synthesis keep both cores of a small PBX host busy while callers talk. At equal
priority the kernel lets a waking event loop wait a scheduler slice (a few ms) for a core, and
that wait is RTP send jitter on every call. Worker threads doing model work therefore run at a
higher nice value than the loop; on Linux the nice value is per thread and inherited by the
threads a thread starts, so a model's own thread pool created from such a thread yields too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SPEECH_NICENESS = 10  # added to the daemon's own nice value (weight ~1/10 of the loop's)
MAX_NICE = 19


def lower_thread_priority(niceness: int = SPEECH_NICENESS) -> int | None:
    """Raise the calling thread's nice value to the daemon's plus niceness; the value, or None.

    A thread already at or above it is left alone (lowering it back needs privileges), and on a
    system without per-thread priorities nothing changes.
    """
    target = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, os.getpid()) + niceness)
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < target:
            os.setpriority(os.PRIO_PROCESS, thread, target)
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError:  # a thread id is not a process id here (not Linux): leave it as it is
        return None


def at_speech_priority(fn: Callable[..., T], *args: object) -> T:
    """fn(*args) on the calling (worker) thread, after lowering that thread's priority."""
    lower_thread_priority()
    return fn(*args)
