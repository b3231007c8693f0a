"""The audio codecs a call may use, by SDP name: stateless G.711 laws, or a call's own G.722."""

from __future__ import annotations

from typing import TypeAlias

from ..config import MEDIA_CODECS
from .g711 import CODECS as G711_CODECS
from .g711 import G711
from .g722 import G722

Codec: TypeAlias = G711 | G722
NAMES = MEDIA_CODECS  # what media.codecs may name: every one of them opens here


def open_codec(name: str) -> Codec:
    """A codec for one call by SDP encoding name (any case); G.722 gets fresh state."""
    upper = name.upper()
    if upper == G722.name:
        return G722()
    try:
        return G711_CODECS[upper]
    except KeyError:
        raise ValueError(f"unsupported codec {name!r}: voicedashd speaks "
                         f"{', '.join(NAMES)}") from None
