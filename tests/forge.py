"""Hand-made JWTs for attack tests: any header, any payload, any (or a junk) signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified_claims(token: str) -> dict[str, Any]:
    """Read a JWT's payload without checking anything."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def forge(payload: dict[str, Any], *, alg: str = "HS256", key: bytes | None = None,
          signature: bytes | None = None, header: dict[str, Any] | None = None) -> str:
    """Build a compact JWS; HMAC-SHA256 over it with key, or the given raw signature."""
    head = b64url(json.dumps(header or {"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    signing_input = f"{head}.{body}".encode()
    if signature is None:
        signature = hmac.new(key, signing_input, hashlib.sha256).digest() if key else b""
    return f"{head}.{body}.{b64url(signature)}"


def attack_table(good: str, secret: bytes, audience: str = "voicedashd-dashboard",
                 issuer: str = "voicedashd") -> dict[str, tuple[str, str]]:
    """Tokens derived from a good access token that must be refused, each with the reason."""
    claims = unverified_claims(good)
    now = int(time.time())

    def signed(**changes: Any) -> str:
        payload = {k: v for k, v in ({**claims, **changes}).items() if v is not None}
        return forge(payload, key=secret)

    head, body, sig = good.split(".")
    tampered = unverified_claims(good) | {"role": "admin", "sub": "9999"}
    algorithm, signature = "algorithm is not accepted", "signature or format is invalid"
    return {
        "alg none": (forge(claims, header={"alg": "none", "typ": "JWT"}), algorithm),
        "alg none, signature kept": (forge(claims, header={"alg": "none"}, signature=b"x" * 32),
                                     algorithm),
        "HS256 with another key": (forge(claims, key=b"k" * 48), signature),
        "HS512 with the real key": (_hs512(claims, secret), algorithm),
        "RS256 header, HMAC with the secret (key confusion)": (
            forge(claims, header={"alg": "RS256", "typ": "JWT"}, key=secret), algorithm),
        "RS256 header, junk signature": (forge(claims, alg="RS256", signature=b"\x01" * 256),
                                         algorithm),
        "ES256 header, junk signature": (forge(claims, alg="ES256", signature=b"\x02" * 64),
                                         algorithm),
        "expired": (signed(iat=now - 7200, exp=now - 3600), "expired"),
        "iat in the future": (signed(iat=now + 3600, exp=now + 7200), "not valid yet"),
        "nbf in the future": (signed(nbf=now + 3600), "not valid yet"),
        "wrong audience": (signed(aud="someone-else"), "another audience"),
        "audience list without ours": (signed(aud=["someone-else"]), "another audience"),
        "wrong issuer": (signed(iss="evil"), "another issuer"),
        "missing exp": (signed(exp=None), "lacks the 'exp' claim"),
        "missing sub": (signed(sub=None), "lacks the 'sub' claim"),
        "missing iat": (signed(iat=None), "lacks the 'iat' claim"),
        "not an access token (typ)": (signed(typ="refresh"), "not an access token"),
        "tampered payload": (f"{head}.{b64url(json.dumps(tampered).encode())}.{sig}",
                             signature),
        "signature stripped": (f"{head}.{body}.", signature),
        "garbage": ("not-a-jwt", signature),
        "validly signed, sub of a user who does not exist": (signed(sub="0000"),
                                                             "no longer exists"),
        "validly signed, role not the user's": (signed(role="admin"), "role changed"),
        "validly signed, stale password fingerprint": (signed(cred="0" * 32),
                                                       "password changed"),
    }


def _hs512(payload: dict[str, Any], key: bytes) -> str:
    head = b64url(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha512).digest()
    return f"{head}.{body}.{b64url(mac)}"
