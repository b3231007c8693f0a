"""Dashboard auth against the real daemon over HTTP: login, tokens, attacks, throttling."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.forge import attack_table, unverified_claims
from tests.harness import DaemonConfig, User, make_config, run_daemon
from voicedashd.hub.client import HubClosed, open_hub

TIMEOUT = 30


def secret_of(config: DaemonConfig) -> bytes:
    """The daemon's JWT signing key, as the config's secret file holds it."""
    return (config.dir / "jwt-secret").read_bytes().strip()


async def login(http: httpx.AsyncClient, user: User, password: str | None = None,
                **extra: Any) -> httpx.Response:
    body = {"extension": user.extension, "password": password or user.password,
            "tenant": user.tenant} | extra
    return await http.post("/api/auth/login", json={k: v for k, v in body.items()
                                                     if v is not None})


async def me(http: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await http.get("/api/auth/me", headers={"Authorization": f"Bearer {access_token}"})


def assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


async def test_login_me_refresh_logout(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice, User("1002", role="admin")])
    config.write()
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            ok = await login(http, alice)
            assert ok.status_code == 200, ok.text
            tokens = ok.json()
            assert tokens["token_type"] == "bearer"
            assert tokens["expires_in"] == 15 * 60
            assert tokens["user"] == {"extension": "1001", "role": "user", "tenant": "acme"}
            assert ok.headers["Cache-Control"] == "no-store"

            wrong_password = await login(http, alice, password="not-the-password")
            unknown_user = await login(http, User("1999"), password=alice.password)
            unknown_tenant = await login(http, User("1001", tenant="nope"),
                                         password=alice.password)
            for failed in (wrong_password, unknown_user, unknown_tenant):
                assert failed.status_code == 401
                assert failed.content == wrong_password.content
            assert wrong_password.json()["error"] == "invalid_credentials"

            # The tenant may be left out when the extension is unique.
            no_tenant = await login(http, alice, tenant=None)
            assert no_tenant.status_code == 200, no_tenant.text

            answer = await me(http, tokens["access_token"])
            assert answer.status_code == 200
            assert answer.json() == {"extension": "1001", "role": "user", "tenant": "acme"}
            assert_invalid_token(await http.get("/api/auth/me"))
            assert_invalid_token(await http.get(
                "/api/auth/me", headers={"Authorization": f"Basic {tokens['access_token']}"}))

            refreshed = await http.post("/api/auth/refresh",
                                        json={"refresh_token": tokens["refresh_token"]})
            assert refreshed.status_code == 200, refreshed.text
            new = refreshed.json()
            assert new["refresh_token"] != tokens["refresh_token"]
            assert (await me(http, new["access_token"])).status_code == 200

            bye = await http.post("/api/auth/logout",
                                  headers={"Authorization": f"Bearer {new['access_token']}"})
            assert bye.status_code == 204
            assert_invalid_token(await me(http, new["access_token"]))
            assert_invalid_token(await me(http, tokens["access_token"]))   # same session
            again = await http.post("/api/auth/refresh",
                                    json={"refresh_token": new["refresh_token"]})
            assert_invalid_token(again)
            # The other session (login without tenant) is still alive.
            assert (await me(http, no_tenant.json()["access_token"])).status_code == 200

            success = await daemon.wait_for_log("login_succeeded")
            assert (success["extension"], success["tenant"], success["client"]) == (
                "1001", "acme", "127.0.0.1")
            failure = await daemon.wait_for_log("login_failed", extension="1999")
            assert failure["client"] == "127.0.0.1"
            await daemon.wait_for_log("token_refreshed")
            await daemon.wait_for_log("logged_out", extension="1001")
            logs = "\n".join(daemon.raw_stderr)
            for secret in (alice.password, tokens["access_token"], tokens["refresh_token"],
                           new["access_token"], new["refresh_token"]):
                assert secret not in logs


async def test_bad_bodies_are_400_with_a_reason(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path), httpx.AsyncClient(base_url=config.api_url) as http:
            cases: list[tuple[dict[str, Any], str]] = [
                ({"json": {"extension": "1001"}}, "password: required field is missing"),
                ({"json": {"extension": 1001, "password": "x"}}, "extension:"),
                ({"json": {"extension": "1001", "password": "x", "pin": 1}},
                 "pin: unknown field"),
                ({"json": ["1001", "x"]}, "JSON object"),
                ({"content": b"extension=1001&password=x",
                  "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
                 "JSON object"),
                ({"content": b"{not json", "headers": {"Content-Type": "application/json"}},
                 "valid JSON"),
            ]
            for request, detail in cases:
                answer = await http.post("/api/auth/login", **request)
                assert answer.status_code == 400, (request, answer.text)
                assert answer.json()["error"] == "bad_request"
                assert detail in answer.json()["detail"], answer.text
            answer = await http.post("/api/auth/login",
                                     json={"extension": "1001", "password": 12345678})
            assert "12345678" not in answer.text
            assert (await http.post("/api/auth/refresh", json={})).status_code == 400

            ok = (await login(http, alice)).json()
            answer = await http.post(
                "/api/auth/logout", json={"refresh_token": 5},
                headers={"Authorization": f"Bearer {ok['access_token']}"})
            assert answer.status_code == 400, answer.text

            schema = (await http.get("/openapi.json")).json()
            assert {"/api/auth/login", "/api/auth/refresh", "/api/auth/logout",
                    "/api/auth/me"} <= set(schema["paths"])
            assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
            assert schema["paths"]["/api/auth/me"]["get"]["security"] == [{"bearer": []}]
            assert (await http.get("/docs")).status_code == 200


async def test_refresh_token_reuse_revokes_the_family(tmp_path: Path) -> None:
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            first = (await login(http, alice)).json()
            other = (await login(http, alice)).json()          # a second, separate session
            second = (await http.post(
                "/api/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
            third = (await http.post(
                "/api/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
            assert (await me(http, third["access_token"])).status_code == 200

            # The stolen first token comes back: refused, and the whole family dies with it.
            reuse = await http.post("/api/auth/refresh",
                                    json={"refresh_token": first["refresh_token"]})
            assert_invalid_token(reuse)
            logged = await daemon.wait_for_log("refresh_token_reuse_detected")
            assert (logged["extension"], logged["tenant"]) == ("1001", "acme")
            newest = await http.post("/api/auth/refresh",
                                     json={"refresh_token": third["refresh_token"]})
            assert_invalid_token(newest)
            for pair in (first, second, third):
                assert_invalid_token(await me(http, pair["access_token"]))
            assert (await me(http, other["access_token"])).status_code == 200
            assert_invalid_token(await http.post("/api/auth/refresh",
                                                 json={"refresh_token": "made-up"}))


async def test_jwt_attack_table(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    config = make_config(tmp_path, users=[alice, bob])
    config.write()
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            tokens = (await login(http, alice)).json()
            table = attack_table(tokens["access_token"], secret_of(config))
            table["refresh token used as access token"] = (tokens["refresh_token"],
                                                           "signature or format")
            wrong = {}
            for name, (token, why) in table.items():
                answer = await me(http, token)
                if answer.status_code != 401 or why not in answer.json().get("detail", ""):
                    wrong[name] = (answer.status_code, answer.text)
                else:
                    assert_invalid_token(answer)
            assert wrong == {}
            assert (await me(http, tokens["access_token"])).status_code == 200

            # A user deleted by a reload: their token stops working at once; others' do not.
            bobs = (await login(http, bob)).json()
            assert (await me(http, bobs["access_token"])).status_code == 200
            config.users.pop()
            config.write()
            mark = len(daemon.logs)
            daemon.send_signal(signal.SIGHUP)
            await daemon.wait_for_log("config_reloaded", start=mark)
            gone = await me(http, bobs["access_token"])
            assert_invalid_token(gone)
            assert "no longer exists" in gone.json()["detail"]
            assert_invalid_token(await http.post(
                "/api/auth/refresh", json={"refresh_token": bobs["refresh_token"]}))
            assert (await me(http, tokens["access_token"])).status_code == 200


async def test_login_throttling(tmp_path: Path) -> None:
    alice, bob = User("1001"), User("1002")
    config = make_config(tmp_path, users=[alice, bob])
    config.write()
    other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    with trio.fail_after(TIMEOUT):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as attacker, httpx.AsyncClient(
                base_url=config.api_url, transport=other_address) as elsewhere:
            for _ in range(5):
                assert (await login(attacker, alice, password="guess-guess")).status_code == 401
            throttled = await login(attacker, alice, password="guess-guess")
            assert throttled.status_code == 429, throttled.text
            assert throttled.json()["error"] == "too_many_attempts"
            assert int(throttled.headers["Retry-After"]) >= 1
            # Even the right password is not checked from that address while it is locked out.
            assert (await login(attacker, alice)).status_code == 429

            # Alice herself, from another address, still gets in; so does Bob.
            home = await login(elsewhere, alice)
            assert home.status_code == 200, home.text
            assert (await login(elsewhere, bob)).status_code == 200
            success = await daemon.wait_for_log("login_succeeded", client="127.0.0.2")
            assert success["extension"] == "1001"
            # One locked account does not lock the attacker's address for other accounts yet.
            assert (await login(attacker, bob)).status_code == 200
            logged = await daemon.wait_for_log("login_throttled")
            assert (logged["extension"], logged["client"]) == ("1001", "127.0.0.1")
            assert "guess-guess" not in json.dumps(daemon.logs)


async def assert_revoked(config: DaemonConfig, http: httpx.AsyncClient, token: str,
                         hub: bool = False) -> None:
    """The REST API answers 401 "revoked" (not "expired") and, if asked, the hub closes 4401."""
    answer = await me(http, token)
    assert_invalid_token(answer)
    assert "revoked" in answer.json()["detail"], answer.text
    if hub:
        with pytest.raises(HubClosed) as closed:
            async with open_hub(f"ws://127.0.0.1:{config.hub_port}/ws", token,
                                origin=config.api_url):
                pass
        assert closed.value.code == 4401
        assert closed.value.reason is not None and "revoked" in closed.value.reason


async def test_revoked_tokens_stay_refused_after_the_access_ttl_is_lowered(
        tmp_path: Path) -> None:
    """Revocations last until the tokens they cover expire, whatever auth.access_token_ttl
    becomes. Kept for the new 1 s lifetime (plus leeway) they would be forgotten after ~21 s."""
    alice = User("1001")
    config = make_config(tmp_path, users=[alice])
    config.write()
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, httpx.AsyncClient(
                base_url=config.api_url) as http:
            logged_out = (await login(http, alice)).json()
            stolen = (await login(http, alice)).json()
            kept = (await login(http, alice)).json()
            assert (await http.post("/api/auth/logout", headers={
                "Authorization": f"Bearer {logged_out['access_token']}"})).status_code == 204
            rotated = (await http.post("/api/auth/refresh", json={
                "refresh_token": stolen["refresh_token"]})).json()
            assert_invalid_token(await http.post("/api/auth/refresh", json={
                "refresh_token": stolen["refresh_token"]}))           # reuse: family revoked
            revoked_at = time.time()
            revoked = [logged_out["access_token"], stolen["access_token"],
                       rotated["access_token"]]
            own_exp = min(unverified_claims(token)["exp"] for token in revoked)
            assert own_exp >= revoked_at + 14 * 60                    # issued for 15 minutes

            config.path.write_text(config.render().replace(
                "[auth]\n", '[auth]\naccess_token_ttl = "1s"\n', 1))
            mark = len(daemon.logs)
            daemon.send_signal(signal.SIGHUP)
            reloaded = await daemon.wait_for_log("config_reloaded", start=mark)
            assert reloaded["applied"] == ["auth.access_token_ttl"]
            short = (await login(http, alice)).json()
            assert short["expires_in"] == 1

            # Probe every few seconds until well past the new lifetime plus both leeways.
            deadline = trio.current_time() + (revoked_at + 25 - time.time())
            while True:
                for token in revoked:
                    await assert_revoked(config, http, token)
                if trio.current_time() >= deadline:
                    break
                await trio.sleep_until(min(deadline, trio.current_time() + 4))
            assert time.time() < own_exp            # still within their own lifetime
            for token in revoked:
                await assert_revoked(config, http, token, hub=True)
            assert (await me(http, kept["access_token"])).status_code == 200

        # A restart with the 1 s lifetime reads the revocations back from the store.
        async with run_daemon(config.path), httpx.AsyncClient(base_url=config.api_url) as http:
            for token in revoked:
                await assert_revoked(config, http, token, hub=True)
            assert (await me(http, kept["access_token"])).status_code == 200
