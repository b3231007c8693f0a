"""settle_heap: start-up objects leave the collector's view, young collections get rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from voicedashd.heap import OLDER_THRESHOLDS, YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Put the test process's collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settle_heap_freezes_what_exists_and_raises_the_young_threshold() -> None:
    loaded_at_start = [{"model": n} for n in range(1000)]
    settle_heap()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_freeze_count() >= len(loaded_at_start)
    made_later = {"call": 1, "tags": []}
    collectable = {id(o) for o in gc.get_objects()}     # the permanent generation is left out
    assert id(loaded_at_start[0]) not in collectable
    assert id(made_later) in collectable
