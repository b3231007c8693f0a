"""Authentication without HTTP: tokens, the JWT attack table, throttling, refresh rotation."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import trio
from argon2 import PasswordHasher

from tests.forge import attack_table, forge, unverified_claims
from voicedashd.auth import (
    Authenticator,
    AuthUser,
    InvalidCredentials,
    InvalidToken,
    LoginThrottle,
    LoginThrottled,
    RefreshTokenReused,
    RevokedFamilies,
    ThrottlePolicy,
    TokenPair,
    client_key,
)
from voicedashd.config import Config, parse_config
from voicedashd.livecfg import LiveConfig
from voicedashd.metrics import Metrics
from voicedashd.store import Store, open_store
from voicedashd.tokenstore import token_digest

SECRET = "s3cret-" * 8
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORDS = {("acme", "1001"): "pw-1001-acme", ("acme", "1002"): "pw-1002-acme",
             ("acme", "2000"): "pw-2000-acme", ("globex", "2000"): "pw-2000-globex"}
_HASHES = {password: CHEAP.hash(password) for password in PASSWORDS.values()}


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def config_text(users: dict[tuple[str, str], str], roles: dict[str, str] | None = None,
                auth: str = "") -> str:
    lines = ['[sip]', 'listen = "127.0.0.1:5060"', '[api]', 'listen = "127.0.0.1:8080"',
             '[hub]', 'listen = "127.0.0.1:8081"', '[store]', 'path = "db.sqlite3"',
             '[auth]', auth, '[[tenants]]', 'name = "acme"', '[[tenants]]', 'name = "globex"']
    for (tenant, extension), password in users.items():
        role = (roles or {}).get(extension, "user")
        lines += ['[[users]]', f'extension = "{extension}"', f'tenant = "{tenant}"',
                  f'role = "{role}"',
                  f'password_hash = "{_HASHES.get(password) or CHEAP.hash(password)}"']
    return "\n".join(lines) + "\n"


def make_config(tmp_path: Path, users: dict[tuple[str, str], str] | None = None,
                roles: dict[str, str] | None = None, auth: str = "") -> Config:
    return parse_config(config_text(PASSWORDS if users is None else users, roles, auth),
                        path=tmp_path / "voicedashd.toml",
                        environ={"VOICEDASHD_JWT_SECRET": SECRET})


@dataclasses.dataclass
class Env:
    live: LiveConfig
    store: Store
    clock: FakeClock
    auth: Authenticator
    tmp_path: Path

    def restart(self) -> Authenticator:
        """A new Authenticator on the same store, as after a daemon restart."""
        return Authenticator(self.live, self.store, clock=self.clock, hasher=CHEAP)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    live = LiveConfig(make_config(tmp_path))
    clock = FakeClock(time.time())
    async with open_store(tmp_path / "db.sqlite3", Metrics()) as store:
        auth = Authenticator(live, store, clock=clock, hasher=CHEAP,
                             throttle=LoginThrottle(clock=clock))
        yield Env(live, store, clock, auth, tmp_path)


async def login(auth: Authenticator, extension: str = "1001", tenant: str | None = "acme",
                password: str | None = None, client: str = "192.0.2.1") -> TokenPair:
    password = password or PASSWORDS[(tenant or "acme", extension)]
    return await auth.login(extension, password, tenant, client)


# -- access tokens -----------------------------------------------------------------------


async def test_login_issues_a_verifiable_access_token(env: Env) -> None:
    pair = await login(env.auth)
    claims = unverified_claims(pair.access_token)
    assert jwt.get_unverified_header(pair.access_token)["alg"] == "HS256"
    assert claims["iss"] == "voicedashd" and claims["aud"] == "voicedashd-dashboard"
    assert (claims["sub"], claims["tenant"], claims["role"], claims["typ"]) == (
        "1001", "acme", "user", "access")
    assert claims["exp"] - claims["iat"] == 15 * 60 == pair.expires_in
    assert claims["fam"] == pair.user.family and claims["jti"] == pair.user.jti
    user = await env.auth.verify_access(pair.access_token)
    assert user == AuthUser("1001", "acme", "user", claims["jti"], pair.user.family)
    assert "password" not in str(claims) and PASSWORDS[("acme", "1001")] not in str(claims)


async def test_every_forged_token_is_refused_for_its_reason(env: Env) -> None:
    good = (await login(env.auth)).access_token
    table = attack_table(good, SECRET.encode())
    table["refresh token used as access token"] = ((await login(env.auth)).refresh_token,
                                                   "signature or format is invalid")
    wrong = {}
    for name, (token, why) in table.items():
        try:
            await env.auth.verify_access(token)
        except InvalidToken as exc:
            if why not in exc.detail:
                wrong[name] = exc.detail
            continue
        wrong[name] = "accepted"
    assert wrong == {}
    # The table is not vacuous: the good token and a faithful re-signing of it pass.
    await env.auth.verify_access(good)
    await env.auth.verify_access(forge(unverified_claims(good), key=SECRET.encode()))


async def test_token_issued_long_ago_has_expired(env: Env) -> None:
    env.clock.advance(-3600)
    pair = await login(env.auth)
    with pytest.raises(InvalidToken, match="expired"):
        await env.auth.verify_access(pair.access_token)


async def test_reload_that_removes_or_changes_a_user_invalidates_tokens(env: Env) -> None:
    tokens = {ext: (await login(env.auth, ext)).access_token for ext in ("1001", "1002")}
    users = {k: v for k, v in PASSWORDS.items() if k != ("acme", "1001")}
    users[("acme", "1002")] = "a-new-password"
    env.live.replace(make_config(env.tmp_path, users, roles={"2000": "admin"}))
    with pytest.raises(InvalidToken, match="no longer exists"):
        await env.auth.verify_access(tokens["1001"])
    with pytest.raises(InvalidToken, match="password changed"):
        await env.auth.verify_access(tokens["1002"])


async def test_role_change_invalidates_access_token_but_refresh_picks_up_new_role(
        env: Env) -> None:
    pair = await login(env.auth, "2000")
    env.live.replace(make_config(env.tmp_path, roles={"2000": "admin"}))
    with pytest.raises(InvalidToken, match="role"):
        await env.auth.verify_access(pair.access_token)
    fresh = await env.auth.refresh(pair.refresh_token)
    assert (await env.auth.verify_access(fresh.access_token)).role == "admin"


# -- login -------------------------------------------------------------------------------


class CountingHasher(PasswordHasher):
    """A cheap hasher that records which hashes were verified."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified: list[str] = []
        self.hashed = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(str(hash))
        return super().verify(hash, password)

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        return super().hash(password, salt=salt)


async def test_unknown_user_costs_one_verify_against_one_dummy_hash(env: Env) -> None:
    hasher = CountingHasher()
    auth = Authenticator(env.live, env.store, clock=env.clock, hasher=hasher)
    for extension in ("9999", "9998"):
        with pytest.raises(InvalidCredentials) as failed:
            await auth.login(extension, "whatever-password", "acme", "192.0.2.1")
        assert failed.value.reason == "unknown_user"
    with pytest.raises(InvalidCredentials) as failed:
        await auth.login("1001", "wrong-password", "acme", "192.0.2.1")
    assert failed.value.reason == "wrong_password"
    dummy = hasher.verified[0]
    assert hasher.verified == [dummy, dummy, _HASHES[PASSWORDS[("acme", "1001")]]]
    assert hasher.hashed == 1  # the dummy is made once, not per request


async def test_tenant_may_be_omitted_when_the_extension_is_unique(env: Env) -> None:
    pair = await env.auth.login("1001", PASSWORDS[("acme", "1001")], None, "192.0.2.1")
    assert (pair.user.tenant, pair.user.extension) == ("acme", "1001")
    # 2000 exists in two tenants: without a tenant this is a failed login, whatever password.
    for password in (PASSWORDS[("acme", "2000")], PASSWORDS[("globex", "2000")]):
        with pytest.raises(InvalidCredentials):
            await env.auth.login("2000", password, None, "192.0.2.1")
    pair = await env.auth.login("2000", PASSWORDS[("globex", "2000")], "globex", "192.0.2.1")
    assert pair.user.tenant == "globex"


async def test_verification_runs_in_a_worker_thread(env: Env) -> None:
    seen: list[bool] = []

    class Probe(CountingHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            try:
                trio.lowlevel.current_task()
                seen.append(False)
            except RuntimeError:
                seen.append(True)
            return super().verify(hash, password)

    auth = Authenticator(env.live, env.store, clock=env.clock, hasher=Probe())
    await auth.login("1001", PASSWORDS[("acme", "1001")], "acme", "192.0.2.1")
    assert seen == [True]


# -- refresh tokens ----------------------------------------------------------------------


async def _rows(store: Store) -> list[dict[str, object]]:
    def fetch(conn: sqlite3.Connection) -> list[dict[str, object]]:
        return [dict(r) for r in conn.execute("SELECT * FROM refresh_tokens ORDER BY issued_at")]
    return await store.run(fetch)


async def test_refresh_tokens_are_stored_hashed(env: Env) -> None:
    pair = await login(env.auth)
    rows = await _rows(env.store)
    assert [r["token_hash"] for r in rows] == [token_digest(pair.refresh_token)]
    assert pair.refresh_token not in str(rows)
    assert rows[0]["family"] == pair.user.family
    assert rows[0]["expires_at"] == pytest.approx(env.clock.now + 8 * 3600)


async def test_refresh_rotates_and_reuse_revokes_the_family(env: Env) -> None:
    first = await login(env.auth)
    env.clock.advance(1)
    second = await env.auth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.user.family == first.user.family
    third = await env.auth.refresh(second.refresh_token)
    await env.auth.verify_access(third.access_token)
    other = await login(env.auth, "1002")      # another session, untouched by the reuse

    with pytest.raises(RefreshTokenReused):
        await env.auth.refresh(first.refresh_token)
    with pytest.raises(InvalidToken, match="revoked"):
        await env.auth.refresh(third.refresh_token)
    for pair in (first, second, third):
        with pytest.raises(InvalidToken, match="revoked"):
            await env.auth.verify_access(pair.access_token)
    # ... and the revocation survives a restart.
    with pytest.raises(InvalidToken, match="revoked"):
        await env.restart().verify_access(third.access_token)
    await env.auth.verify_access(other.access_token)
    await env.auth.refresh(other.refresh_token)


async def test_concurrent_refreshes_of_one_token_let_one_through(env: Env) -> None:
    pair = await login(env.auth)
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await env.auth.refresh(pair.refresh_token)
            outcomes.append("ok")
        except RefreshTokenReused:
            outcomes.append("reused")

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(attempt)
    assert sorted(outcomes) == ["ok", "reused"]


async def test_unknown_and_expired_refresh_tokens_are_refused(env: Env) -> None:
    with pytest.raises(InvalidToken, match="unknown"):
        await env.auth.refresh("made-up")
    pair = await login(env.auth)
    env.clock.advance(8 * 3600 + 1)
    with pytest.raises(InvalidToken, match="expired"):
        await env.auth.refresh(pair.refresh_token)


async def test_refresh_for_a_removed_user_is_refused_and_revokes(env: Env) -> None:
    pair = await login(env.auth)
    env.live.replace(make_config(env.tmp_path, {("acme", "1002"): "pw-1002-acme"}))
    with pytest.raises(InvalidToken, match="no longer exists"):
        await env.auth.refresh(pair.refresh_token)
    assert all(r["revoked_at"] is not None for r in await _rows(env.store))


async def test_expired_rows_are_pruned_on_a_later_login(env: Env) -> None:
    await login(env.auth)
    env.clock.advance(8 * 3600 + 15 * 60 + 3600)
    pair = await login(env.auth)
    assert [r["token_hash"] for r in await _rows(env.store)] == [token_digest(pair.refresh_token)]


async def test_logout_revokes_the_session_and_the_given_refresh_token(env: Env) -> None:
    one, two = await login(env.auth), await login(env.auth)
    stranger = await login(env.auth, "1002")
    user = await env.auth.verify_access(one.access_token)
    await env.auth.logout(user, two.refresh_token)
    for token in (one.access_token, two.access_token):
        with pytest.raises(InvalidToken, match="revoked"):
            await env.auth.verify_access(token)
    with pytest.raises(InvalidToken):
        await env.auth.refresh(one.refresh_token)
    # Someone else's refresh token in the body is not revoked by my logout.
    three = await login(env.auth)
    await env.auth.logout(await env.auth.verify_access(three.access_token),
                          stranger.refresh_token)
    await env.auth.refresh(stranger.refresh_token)


async def test_a_lower_access_ttl_does_not_bring_revoked_tokens_back(env: Env) -> None:
    logged_out, reused = await login(env.auth), await login(env.auth, "1002")
    await env.auth.logout(await env.auth.verify_access(logged_out.access_token))
    await env.auth.refresh(reused.refresh_token)
    with pytest.raises(RefreshTokenReused):
        await env.auth.refresh(reused.refresh_token)
    # A reload makes access tokens last a second; the revoked ones were issued for 15 minutes.
    # Revocations kept for the new lifetime (plus leeway) would be forgotten within a minute.
    env.live.replace(make_config(env.tmp_path, auth='access_token_ttl = "1s"'))
    for _ in range(3):
        env.clock.advance(60)
        for auth in (env.auth, env.restart()):
            for pair in (logged_out, reused):
                with pytest.raises(InvalidToken, match="revoked"):
                    await auth.verify_access(pair.access_token)
    # New tokens last the new lifetime; a session that was not revoked is unaffected.
    fresh = await login(env.auth)
    claims = unverified_claims(fresh.access_token)
    assert (claims["exp"] - claims["iat"], fresh.expires_in) == (1, 1)


async def test_access_tokens_never_outlive_their_refresh_token(env: Env) -> None:
    env.live.replace(make_config(env.tmp_path, auth='access_token_ttl = "2h"\n'
                                                    'refresh_token_ttl = "30m"'))
    pair = await login(env.auth)
    claims = unverified_claims(pair.access_token)
    assert (claims["exp"] - claims["iat"], pair.expires_in) == (1800, 1800)
    (row,) = await _rows(env.store)
    assert claims["exp"] <= row["expires_at"]


async def test_a_revocation_lasts_until_its_family_last_expires(env: Env) -> None:
    pair = await login(env.auth)
    env.clock.advance(600)
    pair = await env.auth.refresh(pair.refresh_token)       # the family now lasts 8 h from here
    await env.auth.logout(pair.user)
    revoked = await env.auth._tokens.revoked_families(env.clock.now)
    assert revoked == {pair.user.family: pytest.approx(env.clock.now + 8 * 3600)}
    assert await env.auth._tokens.revoked_families(env.clock.now + 8 * 3600 + 1) == {}


def test_revoked_families_are_forgotten_once_their_tokens_expired() -> None:
    revoked = RevokedFamilies()
    revoked.add("a", 100.0)
    revoked.add("b", 50.0)
    revoked.add("a", 80.0)          # an earlier bound never shortens a revocation
    revoked.add("b", 120.0)
    revoked.prune(99.0)
    assert ("a" in revoked, "b" in revoked, len(revoked)) == (True, True, 2)
    revoked.prune(101.0)
    assert ("a" in revoked, "b" in revoked, len(revoked)) == (False, True, 1)
    revoked.prune(121.0)
    assert len(revoked) == 0


# -- throttling --------------------------------------------------------------------------


def fail(throttle: LoginThrottle, account: tuple[str, str], address: str) -> None:
    with throttle.begin(account, address):
        pass


def succeed(throttle: LoginThrottle, account: tuple[str, str], address: str) -> None:
    with throttle.begin(account, address) as attempt:
        attempt.succeeded()


ALICE = ("acme", "1001")
BOB = ("acme", "1002")


def test_lockout_starts_after_five_failures_and_doubles_up_to_fifteen_minutes() -> None:
    clock = FakeClock(1000.0)
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        fail(throttle, ALICE, "198.51.100.7")
    lockouts = []
    for _ in range(14):
        with pytest.raises(LoginThrottled) as throttled:
            throttle.begin(ALICE, "198.51.100.7")
        lockouts.append(throttled.value.retry_after)
        clock.advance(throttled.value.retry_after)
        fail(throttle, ALICE, "198.51.100.7")
    assert lockouts[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert lockouts[10:] == [900, 900, 900, 900]
    assert throttled.value.retry_after_header == "900"


def test_retry_after_header_is_whole_seconds_rounded_up() -> None:
    assert LoginThrottled(0.2).retry_after_header == "1"
    assert LoginThrottled(1.5).retry_after_header == "2"


def test_one_address_does_not_lock_the_account_out_elsewhere() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(clock=clock)
    # An attacker at one address guesses as fast as the throttle lets them, for a day...
    guesses = 0
    while clock.now < 24 * 3600:
        try:
            fail(throttle, ALICE, "203.0.113.66")
            guesses += 1
        except LoginThrottled as exc:
            clock.advance(exc.retry_after)
        # ... and all along, Alice could log in from home.
        assert throttle.retry_after(ALICE, "192.0.2.10") == 0
    assert guesses <= 5 + 10 + 24 * 3600 // 900
    fail(throttle, ALICE, "203.0.113.66")      # the last lockout just ended: one more guess
    assert throttle.retry_after(ALICE, "203.0.113.66") == 900
    # Alice logging in does not lift the attacker's lockout.
    succeed(throttle, ALICE, "192.0.2.10")
    assert throttle.retry_after(ALICE, "203.0.113.66") == 900


def test_success_resets_the_account_but_not_the_address() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        fail(throttle, ALICE, "192.0.2.1")
    with throttle.begin(ALICE, "192.0.2.1") as attempt:
        attempt.succeeded()
    for _ in range(4):
        fail(throttle, ALICE, "192.0.2.1")      # four more are allowed again
    succeed(throttle, ALICE, "192.0.2.1")


def test_one_address_spraying_accounts_is_throttled_per_address() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(clock=clock)
    policy = throttle.policy
    for n in range(policy.address.threshold):
        fail(throttle, ("acme", f"{3000 + n}"), "203.0.113.9")
    with pytest.raises(LoginThrottled):
        throttle.begin(("acme", "4999"), "203.0.113.9")
    succeed(throttle, ("acme", "4999"), "192.0.2.1")


def test_many_addresses_against_one_account_lock_it_for_everyone() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(clock=clock)
    for n in range(throttle.policy.account.threshold):
        fail(throttle, ALICE, f"10.0.{n // 4}.{n % 4}")
    with pytest.raises(LoginThrottled):
        throttle.begin(ALICE, "192.0.2.1")
    succeed(throttle, BOB, "192.0.2.1")


def test_attempts_in_flight_count_so_parallel_guesses_cannot_slip_through() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(clock=clock)
    attempts = [throttle.begin(ALICE, "203.0.113.5") for _ in range(5)]
    with pytest.raises(LoginThrottled):
        throttle.begin(ALICE, "203.0.113.5")
    for attempt in attempts:
        attempt.__exit__(None, None, None)
    with pytest.raises(LoginThrottled):
        throttle.begin(ALICE, "203.0.113.5")


def test_old_failures_leave_the_window() -> None:
    clock = FakeClock(0.0)
    policy = ThrottlePolicy()
    throttle = LoginThrottle(policy, clock=clock)
    for _ in range(4):
        fail(throttle, ALICE, "192.0.2.1")
    clock.advance(policy.account_address.window + 1)
    for _ in range(4):
        fail(throttle, ALICE, "192.0.2.1")
    succeed(throttle, ALICE, "192.0.2.1")


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key(None) == "unknown"


def test_tracked_keys_are_bounded() -> None:
    clock = FakeClock(0.0)
    throttle = LoginThrottle(dataclasses.replace(ThrottlePolicy(), max_entries=30), clock=clock)
    for n in range(200):
        fail(throttle, ("acme", str(n)), f"10.1.{n // 250}.{n % 250}")
        assert throttle.entries() <= 30 + 3
