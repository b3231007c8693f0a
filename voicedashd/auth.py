"""Dashboard authentication: password login, JWT access tokens, rotating refresh tokens, throttling.

Access tokens are short-lived HS256 JWTs signed with the configured secret. Each carries the
`fam` (family) of the refresh token it was issued with, so revoking a family (logout, reuse of a
rotated refresh token) also kills its access tokens. Refresh tokens are opaque random strings,
stored only as SHA-256 digests, and rotated on every use. An access token never outlives the
refresh token issued with it, so a family's revocation is kept until its last refresh token
has expired: whatever auth.access_token_ttl is changed to later, no revoked token comes back.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import jwt
import trio
from argon2 import PasswordHasher

from .config import AuthConfig, Config, UserConfig
from .livecfg import LiveConfig
from .passwords import new_hasher, verify_password
from .store import Store
from .tokenstore import NewRefreshToken, RefreshTokenStore, RotateOutcome, token_digest

ALGORITHM = "HS256"
ACCESS_TYPE = "access"
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "typ", "tenant", "role", "fam",
                   "cred")
LEEWAY = 10.0
# How long a revocation is kept past the last expiry of the tokens it covers: PyJWT accepts a
# token until exp + LEEWAY, and exp is rounded up to at least a second after iat.
REVOCATION_MARGIN = 2 * LEEWAY
Clock = Callable[[], float]


# -- errors ------------------------------------------------------------------------------


class AuthError(Exception):
    """Base of every authentication failure."""


class InvalidCredentials(AuthError):
    """Unknown user, wrong password or ambiguous extension: deliberately not told apart."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LoginThrottled(AuthError):
    """Too many failed logins for this account or address; retry after retry_after seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.1f}s")
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        """The Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


class InvalidToken(AuthError):
    """An access or refresh token that must not be accepted; detail says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RefreshTokenReused(InvalidToken):
    """A rotated refresh token came back: its whole family has been revoked."""

    def __init__(self, family: str, tenant: str, extension: str) -> None:
        super().__init__("refresh token was already used; the session is revoked, log in again")
        self.family = family
        self.tenant = tenant
        self.extension = extension


# -- identities and token pairs -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthUser:
    """The user behind a verified access token."""

    extension: str
    tenant: str
    role: str
    jti: str
    family: str

    @property
    def is_admin(self) -> bool:
        """Whether the user administers their tenant."""
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a login or refresh hands out."""

    access_token: str
    refresh_token: str
    expires_in: int
    user: AuthUser


def credential_fingerprint(secret: bytes, password_hash: str) -> str:
    """Return a keyed fingerprint of a password hash; a changed password invalidates tokens."""
    return hmac.new(secret, password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def access_token_lifetime(auth: AuthConfig) -> int:
    """Seconds an access token lasts: auth.access_token_ttl, never beyond its refresh token."""
    return max(1, int(min(auth.access_token_ttl, auth.refresh_token_ttl)))


def encode_access_token(config: Config, user: UserConfig, family: str, now: float,
                        jti: str) -> str:
    """Sign an access token for a user, valid from now for access_token_lifetime()."""
    auth = config.auth
    issued = int(now)
    claims = {
        "iss": auth.issuer,
        "aud": auth.audience,
        "sub": user.extension,
        "tenant": user.tenant,
        "role": user.role,
        "iat": issued,
        "exp": issued + access_token_lifetime(auth),
        "jti": jti,
        "typ": ACCESS_TYPE,
        "fam": family,
        "cred": credential_fingerprint(config.jwt_secret, user.password_hash),
    }
    return jwt.encode(claims, config.jwt_secret, algorithm=ALGORITHM)


def decode_access_token(token: str, secret: bytes, auth: AuthConfig) -> dict[str, Any]:
    """Verify signature (HS256 only), issuer, audience, times and claims; return the claims."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=auth.audience, issuer=auth.issuer,
            leeway=LEEWAY, options={"require": list(REQUIRED_CLAIMS), "strict_aud": True})
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired; refresh it or log in again") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("token is not valid yet") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("token is from another issuer") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken("token algorithm is not accepted") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("token signature or format is invalid") from None
    if claims.get("typ") != ACCESS_TYPE:
        raise InvalidToken("not an access token")
    for name in ("sub", "tenant", "role", "jti", "fam", "cred"):
        if not isinstance(claims[name], str):
            raise InvalidToken(f"token claim {name!r} must be a string")
    return claims


# -- login throttling ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    """Lock a key out once it has threshold failures within window seconds."""

    threshold: int
    window: float


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How failed logins are counted and how long lockouts last."""

    account_address: BucketPolicy = BucketPolicy(threshold=5, window=24 * 3600.0)
    address: BucketPolicy = BucketPolicy(threshold=30, window=3600.0)
    account: BucketPolicy = BucketPolicy(threshold=50, window=3600.0)
    base_lockout: float = 1.0
    max_lockout: float = 15 * 60.0
    max_entries: int = 50_000


class _Bucket:
    __slots__ = ("failures", "in_flight", "locked_until")

    def __init__(self, policy: BucketPolicy) -> None:
        self.failures: deque[float] = deque(maxlen=policy.threshold + 32)
        self.locked_until = float("-inf")
        self.in_flight = 0

    def expire(self, policy: BucketPolicy, now: float) -> None:
        while self.failures and self.failures[0] <= now - policy.window:
            self.failures.popleft()

    def idle(self, now: float) -> bool:
        return not self.failures and not self.in_flight and self.locked_until <= now


_Admitted = tuple[_Bucket, BucketPolicy, bool]


def client_key(address: str | None) -> str:
    """Key a client address for throttling: IPv4 as is, IPv6 by its /64 (one host's share)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip.exploded}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """Exponential lockouts after failed logins, keyed three ways, with time passed in.

    Failures are counted per (account, client address), per client address and per account.
    Once a key has `threshold` failures within its window, further attempts are refused for
    base_lockout * 2**(failures - threshold) seconds, capped at max_lockout; while over the
    threshold only one attempt may be in flight, and attempts still being verified count, so a
    burst of parallel guesses cannot slip past. A refused attempt is not checked or counted.

    The tight limit is the (account, address) one, so an attacker at one address locks out only
    themselves: the same user logging in from another address is unaffected. The per-address
    limit stops one address spraying many accounts. The per-account limit (the one that does
    lock out every address) is set above what a single address can reach in its window, given
    its own (account, address) backoff, so it only trips under an attack from several addresses.
    A successful login clears the account's counters and those of its (account, address); the
    per-address counter is left alone so logging in to one's own account cannot reset it.
    """

    def __init__(self, policy: ThrottlePolicy | None = None, *,
                 clock: Clock = time.monotonic) -> None:
        self.policy = policy or ThrottlePolicy()
        self._clock = clock
        self._account_address: dict[tuple[str, str, str], _Bucket] = {}
        self._address: dict[str, _Bucket] = {}
        self._account: dict[tuple[str, str], _Bucket] = {}

    def begin(self, account: tuple[str, str], address: str | None) -> LoginAttempt:
        """Start an attempt for (tenant, extension) from an address, or raise LoginThrottled."""
        now = self._clock()
        client = client_key(address)
        self._prune(now)
        policy = self.policy
        buckets = [  # (bucket, its policy, whether a successful login clears it)
            (self._bucket(self._account_address, (*account, client), policy.account_address),
             policy.account_address, True),
            (self._bucket(self._address, client, policy.address), policy.address, False),
            (self._bucket(self._account, account, policy.account), policy.account, True),
        ]
        wait = max(self._wait(bucket, bucket_policy, now) for bucket, bucket_policy, _ in buckets)
        if wait > 0:
            raise LoginThrottled(wait)
        for bucket, _, _ in buckets:
            bucket.in_flight += 1
        return LoginAttempt(self, buckets)

    def retry_after(self, account: tuple[str, str], address: str | None) -> float:
        """Return how long an attempt would have to wait now (0 when it would be let in)."""
        now = self._clock()
        client = client_key(address)
        lookups: list[tuple[_Bucket | None, BucketPolicy]] = [
            (self._account_address.get((*account, client)), self.policy.account_address),
            (self._address.get(client), self.policy.address),
            (self._account.get(account), self.policy.account),
        ]
        return max((self._wait(b, p, now) for b, p in lookups if b is not None), default=0.0)

    def entries(self) -> int:
        """Return how many keys are being tracked."""
        return len(self._account_address) + len(self._address) + len(self._account)

    def _finish(self, buckets: list[_Admitted], succeeded: bool) -> None:
        now = self._clock()
        for bucket, policy, clear_on_success in buckets:
            bucket.in_flight -= 1
            if succeeded:
                if clear_on_success:
                    bucket.failures.clear()
                    bucket.locked_until = float("-inf")
                continue
            bucket.failures.append(now)
            bucket.expire(policy, now)
            excess = len(bucket.failures) - policy.threshold
            if excess >= 0:
                lockout = min(self.policy.base_lockout * 2 ** excess, self.policy.max_lockout)
                bucket.locked_until = max(bucket.locked_until, now + lockout)

    def _wait(self, bucket: _Bucket, policy: BucketPolicy, now: float) -> float:
        bucket.expire(policy, now)
        if bucket.locked_until > now:
            return bucket.locked_until - now
        if bucket.in_flight and len(bucket.failures) + bucket.in_flight >= policy.threshold:
            return self.policy.base_lockout
        return 0.0

    @staticmethod
    def _bucket(table: dict[Any, _Bucket], key: Any, policy: BucketPolicy) -> _Bucket:
        bucket = table.pop(key, None) or _Bucket(policy)
        table[key] = bucket                 # re-inserted: dict order is least recently used
        return bucket

    def _prune(self, now: float) -> None:
        if self.entries() < self.policy.max_entries:
            return
        tables: list[tuple[dict[Any, _Bucket], BucketPolicy]] = [
            (self._account_address, self.policy.account_address),
            (self._address, self.policy.address), (self._account, self.policy.account)]
        for table, policy in tables:
            for key, bucket in list(table.items()):
                bucket.expire(policy, now)
                if bucket.idle(now):
                    del table[key]
        for table, _ in tables:
            # Still too many keys (an attack from very many addresses): forget the least
            # recently used ones that have nothing in flight.
            excess = len(table) - self.policy.max_entries // 3
            for key in [k for k, b in table.items() if not b.in_flight][:max(0, excess)]:
                del table[key]


class LoginAttempt:
    """One admitted login attempt: a failure unless succeeded() is called before it closes."""

    def __init__(self, throttle: LoginThrottle, buckets: list[_Admitted]) -> None:
        self._throttle = throttle
        self._buckets = buckets
        self._succeeded = False
        self._done = False

    def succeeded(self) -> None:
        """Mark the credentials as correct."""
        self._succeeded = True

    def __enter__(self) -> LoginAttempt:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:
            self._done = True
            self._throttle._finish(self._buckets, self._succeeded)


# -- revoked families ---------------------------------------------------------------------


class RevokedFamilies:
    """Revoked families, each kept until every access token issued in it has expired.

    A revocation carries the time its family's tokens live until (the expiry of the family's
    last refresh token), not the time it was made, so how long it is kept does not depend on
    the access-token lifetime in force when it is pruned.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []      # a heap; stale entries are skipped

    def add(self, family: str, covers_until: float) -> None:
        """Remember a revoked family whose tokens live until covers_until at the latest."""
        if covers_until <= self._until.get(family, float("-inf")):
            return
        self._until[family] = covers_until
        heapq.heappush(self._expiry, (covers_until, family))

    def __contains__(self, family: str) -> bool:
        return family in self._until

    def __len__(self) -> int:
        return len(self._until)

    def prune(self, before: float) -> None:
        """Forget families whose tokens all expired before this time."""
        while self._expiry and self._expiry[0][0] < before:
            until, family = heapq.heappop(self._expiry)
            if self._until.get(family) == until:
                del self._until[family]


# -- the authenticator --------------------------------------------------------------------


_REFRESH_PROBLEMS = MappingProxyType({
    RotateOutcome.UNKNOWN: "unknown refresh token; log in again",
    RotateOutcome.EXPIRED: "refresh token expired; log in again",
    RotateOutcome.REVOKED: "session was revoked; log in again",
})


def _pair(config: Config, user: UserConfig, family: str, refresh_token: str,
          now: float) -> TokenPair:
    jti = secrets.token_urlsafe(16)
    return TokenPair(
        access_token=encode_access_token(config, user, family, now, jti),
        refresh_token=refresh_token,
        expires_in=access_token_lifetime(config.auth),
        user=AuthUser(extension=user.extension, tenant=user.tenant, role=user.role, jti=jti,
                      family=family),
    )


def _password_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Authenticator:
    """Logs users in, verifies access tokens, rotates and revokes refresh tokens.

    Users come from the live config on every use, so a reload that removes a user, changes
    their role or their password invalidates their tokens at once. `clock` (wall time, epoch
    seconds) stamps tokens and refresh-token rows; JWT time claims are checked by PyJWT
    against the system clock. Argon2 runs in worker threads, a few at a time.
    """

    def __init__(self, live: LiveConfig, store: Store, *,
                 throttle: LoginThrottle | None = None, clock: Clock = time.time,
                 hasher: PasswordHasher | None = None) -> None:
        self._live = live
        self._tokens = RefreshTokenStore(store)
        self._throttle = throttle or LoginThrottle()
        self._clock = clock
        self._hasher = hasher or new_hasher()
        self._dummy_hash: str | None = None
        self._dummy_lock = trio.Lock()
        self._password_limiter = trio.CapacityLimiter(_password_threads())
        self._revoked = RevokedFamilies()
        self._revoked_loaded = False
        self._load_lock = trio.Lock()

    @property
    def throttle(self) -> LoginThrottle:
        """The login throttle."""
        return self._throttle

    def resolve_user(self, extension: str, tenant: str | None) -> tuple[str, UserConfig | None]:
        """Find the user for a login; without a tenant the extension must be unique.

        Returns the tenant the attempt counts against (empty when it cannot be told) and the
        user, if any. An extension found in several tenants, with no tenant given, is treated
        as unknown, so the answer does not reveal in which tenants an extension exists.
        """
        config = self._live.current
        if tenant is not None:
            return tenant, config.find_user(tenant, extension)
        matches = [u for u in config.users if u.extension == extension]
        if len(matches) == 1:
            return matches[0].tenant, matches[0]
        return "", None

    async def login(self, extension: str, password: str, tenant: str | None,
                    client: str | None) -> TokenPair:
        """Check a password and open a new session; raise InvalidCredentials or LoginThrottled."""
        dummy_hash = await self._dummy()
        account_tenant, user = self.resolve_user(extension, tenant)
        with self._throttle.begin((account_tenant, extension), client) as attempt:
            password_hash = user.password_hash if user is not None else dummy_hash
            ok = await trio.to_thread.run_sync(
                verify_password, password_hash, password, self._hasher,
                limiter=self._password_limiter)
            if user is None:
                raise InvalidCredentials("unknown_user")
            if not ok:
                raise InvalidCredentials("wrong_password")
            attempt.succeeded()
        return await self._open_session(user)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Exchange a refresh token for a new pair; reuse of a rotated one revokes its family."""
        config = self._live.current
        now = self._clock()
        new_token = secrets.token_urlsafe(32)
        result = await self._tokens.rotate(token_digest(refresh_token), token_digest(new_token),
                                           now, now + config.auth.refresh_token_ttl)
        record = result.record
        if result.outcome is RotateOutcome.REUSED and record is not None:
            self._revoked.add(record.family, result.family_expires_at or now)
            raise RefreshTokenReused(record.family, record.tenant, record.extension)
        if result.outcome is not RotateOutcome.ROTATED or record is None:
            raise InvalidToken(_REFRESH_PROBLEMS.get(result.outcome, "invalid refresh token"))
        user = config.find_user(record.tenant, record.extension)
        problem = self._user_problem(config, user, record.credential, role=None)
        if problem is not None or user is None:
            await self._revoke(record.family)
            raise InvalidToken(problem or "user no longer exists")
        return _pair(config, user, record.family, new_token, now)

    async def verify_access(self, token: str) -> AuthUser:
        """Return the user of a valid, unrevoked access token; raise InvalidToken otherwise."""
        config = self._live.current
        claims = decode_access_token(token, config.jwt_secret, config.auth)
        user = config.find_user(claims["tenant"], claims["sub"])
        problem = self._user_problem(config, user, claims["cred"], role=claims["role"])
        if problem is not None or user is None:
            raise InvalidToken(problem or "user no longer exists")
        await self._load_revoked()
        if claims["fam"] in self._revoked:
            raise InvalidToken("session was revoked; log in again")
        return AuthUser(extension=user.extension, tenant=user.tenant, role=user.role,
                        jti=claims["jti"], family=claims["fam"])

    async def logout(self, user: AuthUser, refresh_token: str | None = None) -> None:
        """End the session of an access token (and of a refresh token of the same user)."""
        await self._revoke(user.family)
        if refresh_token:
            record = await self._tokens.lookup(token_digest(refresh_token))
            if (record is not None and record.family != user.family
                    and (record.tenant, record.extension) == (user.tenant, user.extension)):
                await self._revoke(record.family)

    # -- internals ---------------------------------------------------------------------------

    async def _dummy(self) -> str:
        """Return the hash verified when the user is unknown, so that costs a real verify.

        Made once, on the first login of any user (known or not), so even the first answer
        does not tell an unknown user from a wrong password; same parameters as the hashes
        that `voicedashd hash-password` writes.
        """
        if self._dummy_hash is not None:
            return self._dummy_hash
        async with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = await trio.to_thread.run_sync(
                    self._hasher.hash, secrets.token_urlsafe(24), limiter=self._password_limiter)
            return self._dummy_hash

    async def _open_session(self, user: UserConfig) -> TokenPair:
        config = self._live.current
        now = self._clock()
        family = secrets.token_urlsafe(16)
        refresh_token = secrets.token_urlsafe(32)
        await self._tokens.add(
            NewRefreshToken(digest=token_digest(refresh_token), family=family,
                            tenant=user.tenant, extension=user.extension,
                            credential=credential_fingerprint(config.jwt_secret,
                                                              user.password_hash),
                            issued_at=now, expires_at=now + config.auth.refresh_token_ttl),
            # Rows are the revocations' record: each goes only once its own tokens (the access
            # token issued with it expires no later) are past any leeway.
            prune_before=now - config.auth.access_token_ttl - REVOCATION_MARGIN)
        return _pair(config, user, family, refresh_token, now)

    @staticmethod
    def _user_problem(config: Config, user: UserConfig | None, credential: str,
                      role: str | None) -> str | None:
        if user is None:
            return "user no longer exists"
        if role is not None and user.role != role:
            return "user's role changed; refresh the token or log in again"
        expected = credential_fingerprint(config.jwt_secret, user.password_hash)
        if not hmac.compare_digest(expected, credential):
            return "user's password changed; log in again"
        return None

    async def _revoke(self, family: str) -> None:
        now = self._clock()
        self._revoked.add(family, now)          # at once: the store is written in a thread
        covers_until = await self._tokens.revoke_family(family, now)
        self._revoked.add(family, covers_until if covers_until is not None else now)

    async def _load_revoked(self) -> None:
        """Load revoked families once, so revocations survive a restart."""
        now = self._clock()
        if not self._revoked_loaded:
            async with self._load_lock:
                if not self._revoked_loaded:
                    revoked = await self._tokens.revoked_families(now - REVOCATION_MARGIN)
                    for family, covers_until in revoked.items():
                        self._revoked.add(family, covers_until)
                    self._revoked_loaded = True
        self._revoked.prune(now - REVOCATION_MARGIN)
