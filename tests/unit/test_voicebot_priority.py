"""Speech worker threads yield the CPU to the event loop, and the threads they start do too."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from voicedashd.voicebot.priority import (
    MAX_NICE,
    SPEECH_NICENESS,
    at_speech_priority,
    lower_thread_priority,
)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _in_thread(fn: Callable[[], object]) -> object:
    """fn() on a fresh thread (so the test's own thread keeps its priority); its result."""
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    return results[0]


def _expected() -> int:
    return min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, os.getpid()) + SPEECH_NICENESS)


def test_a_worker_thread_is_lowered_and_the_rest_of_the_process_is_not() -> None:
    before = _nice()
    assert _in_thread(lambda: (lower_thread_priority(), _nice())) == (_expected(), _expected())
    assert _nice() == before


def test_lowering_twice_does_not_lower_further() -> None:
    def twice() -> tuple[int | None, int | None]:
        return lower_thread_priority(), lower_thread_priority()

    assert _in_thread(twice) == (_expected(), _expected())


def test_threads_started_by_a_lowered_thread_inherit_its_priority() -> None:
    def start_a_pool_thread() -> object:
        lower_thread_priority()
        return _in_thread(_nice)

    assert _in_thread(start_a_pool_thread) == _expected()


def test_work_run_at_speech_priority_returns_its_result() -> None:
    assert _in_thread(lambda: at_speech_priority(lambda a, b: (a + b, _nice()), 2, 3)) == (
        5, _expected())
