"""The garbage collector's settings for a long-running daemon with a large start-up heap."""

from __future__ import annotations

import gc

# Every call leaves its transactions alive for 64*T1 (32 s) to absorb retransmissions, so at
# hundreds of calls/s the heap holds many thousands of them. With CPython's default threshold
# (700) young collections run so often that a call's short-lived objects are promoted, and
# full collections walk the whole heap several times a minute. Collecting the young
# generation every 20,000 allocations lets call garbage die young; the older generations are
# collected after 10 and 10 young/middle collections, as by default.
YOUNG_THRESHOLD = 20_000
OLDER_THRESHOLDS = (10, 10)


def settle_heap() -> None:
    """Collect once, keep what start-up loaded out of every later collection, and tune them."""
    gc.collect()
    gc.freeze()  # modules, models and the knowledge index live as long as the process
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
