"""The X-Voicedashd-Signature header: HMAC-SHA256 of the raw body, as "sha256=<hex>"."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def signature(secret: bytes, body: bytes) -> str:
    """The signature header value of body under secret."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether a signature header value is body's under secret (constant-time compare)."""
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())
