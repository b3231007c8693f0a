"""Config validation and the check-config / hash-password commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import User, make_config
from voicedashd.config import (
    ConfigError,
    apply_reload,
    changed_keys,
    load_config,
    parse_duration,
)
from voicedashd.passwords import verify_password

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "voicedashd.toml"
SECRET = "x" * 40


def _cli(*args: str, stdin: str = "", env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    import os
    environment = {k: v for k, v in os.environ.items() if k != "VOICEDASHD_JWT_SECRET"}
    environment |= env or {}
    return subprocess.run([sys.executable, "-m", "voicedashd", *args], input=stdin,
                          capture_output=True, text=True, env=environment, timeout=60)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_config(tmp_path).write()


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_check_config_accepts_the_example_config() -> None:
    result = _cli("check-config", str(EXAMPLE), env={"VOICEDASHD_JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_example_config_without_a_secret_names_the_secret_setting() -> None:
    result = _cli("check-config", str(EXAMPLE))
    assert result.returncode == 2
    assert "auth.jwt_secret_file" in result.stderr


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (None, "file not found"),
        (("[sip]", "[sip"), "invalid TOML"),
        (("[api]\n", "[api]\nlisen = 1\n"), "config error: api.lisen: unknown key"),
        (("[log]\n", "[log]\ncolour = true\n"), "config error: log.colour: unknown key"),
        (('listen = "127.0.0.1:', 'listen = "127.0.0.1:7'),
         "config error: sip.listen: port must be 1-65535, got 7"),
        (('level = "debug"', 'level = "loud"'), "config error: log.level:"),
        (('shutdown_grace = "5s"', 'shutdown_grace = "5 parsecs"'),
         "config error: daemon.shutdown_grace: not a duration"),
        (('trusted = ["127.0.0.0/8"]', 'trusted = ["127.0.0.0/33"]'),
         "config error: sip.trusted: not a CIDR"),
        (('role = "user"', 'role = "root"'), "config error: users[0].role:"),
        (('tenant = "acme"', 'tenant = "nobody"'), "users[0].tenant: no tenant named 'nobody'"),
        (("[media]", '[[sip.trunks]]\nname = "pbx"\nsources = ["127.0.0.2"]\n'
                     'tenant = "nobody"\n[media]'),
         "config error: sip.trunks[0].tenant: no tenant named 'nobody'"),
        (("[media]", '[[sip.trunks]]\nname = "pbx"\nsources = ["pbx.example"]\n[media]'),
         "config error: sip.trunks[0].sources: not a CIDR"),
        (("[media]", '[[sip.trunks]]\nname = "pbx"\nsources = []\n[media]'),
         "config error: sip.trunks[0].sources:"),
        (("[media]", '[[sip.trunks]]\nname = "pbx"\nsources = ["127.0.0.2"]\n'
                     '[[sip.trunks]]\nname = "pbx"\nsources = ["127.0.0.3"]\n[media]'),
         "config error: sip.trunks[1].name: 'pbx' appears twice"),
    ],
)
def test_check_config_rejects_with_the_key_named(good: Path, edit: tuple[str, str] | None,
                                                  expected: str) -> None:
    path = good if edit else good.with_name("missing.toml")
    if edit:
        text = path.read_text()
        old, new = edit
        assert old in text
        path.write_text(text.replace(old, new, 1))
    result = _cli("check-config", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert all(line.startswith("config error: ") for line in result.stderr.splitlines())


def test_bad_port_is_one_line(good: Path) -> None:
    text = good.read_text()
    port = text.split('listen = "127.0.0.1:')[1].split('"')[0]
    good.write_text(text.replace(f"127.0.0.1:{port}", "127.0.0.1:70000", 1))
    result = _cli("check-config", str(good))
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: sip.listen: port must be 1-65535, got 70000"


def test_short_secret_is_rejected(good: Path) -> None:
    (good.parent / "jwt-secret").write_text("too-short")
    result = _cli("check-config", str(good))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: auth.jwt_secret_file: secret must be at least 32 bytes, got 9")


def test_short_secret_from_environment_names_the_variable(good: Path) -> None:
    result = _cli("check-config", str(good), env={"VOICEDASHD_JWT_SECRET": "short"})
    assert result.returncode == 2
    assert "VOICEDASHD_JWT_SECRET: secret must be at least 32 bytes, got 5" in result.stderr


def test_environment_secret_overrides_the_file(good: Path) -> None:
    (good.parent / "jwt-secret").unlink()
    config = load_config(good, environ={"VOICEDASHD_JWT_SECRET": SECRET})
    assert config.jwt_secret == SECRET.encode()


def test_missing_section_is_named(good: Path) -> None:
    text = good.read_text()
    start = text.index("[hub]")
    end = text.index("[store]")
    good.write_text(text[:start] + text[end:])
    with pytest.raises(ConfigError) as info:
        load_config(good)
    assert info.value.problems == ["hub: required key is missing"]


def test_durations() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("8h") == 28800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    for bad in ("", "15", "m", "1y", "15 m", 15):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_relative_paths_resolve_next_to_the_file(good: Path) -> None:
    config = load_config(good)
    assert config.store.path == good.parent / "store.sqlite3"


def test_tenant_lookup_by_domain_with_default(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tenants={"acme": ["acme.example"], "globex": ["Globex.Example"]})
    config = load_config(cfg.write())
    assert config.tenant_for_domain("globex.example").name == "globex"
    assert config.tenant_for_domain("unknown.example").name == "acme"
    assert config.tenant_for_domain(None).name == "acme"


def test_a_calls_tenant_is_its_trunks_else_its_domains(tmp_path: Path) -> None:
    """The trunk (by source address) decides when it names a tenant; else the callee's domain,
    else the default tenant. Trunk sources may send INVITEs beside sip.trusted."""
    cfg = make_config(tmp_path, tenants={"acme": ["acme.example"], "globex": ["globex.example"]})
    cfg.trusted = ("127.0.0.1/32",)
    trunks = ('[[sip.trunks]]\nname = "globex-pbx"\nsources = ["127.0.0.2/32", "::1"]\n'
              'tenant = "globex"\n'
              '[[sip.trunks]]\nname = "shared-pbx"\nsources = ["127.0.0.3", "127.0.0.2"]\n')
    path = _edit(cfg.write(), "[media]", trunks + "[media]")
    config = load_config(path)
    sip = config.sip
    assert [t.name for t in sip.trunks] == ["globex-pbx", "shared-pbx"]
    assert sip.trunk_for("127.0.0.2").name == "globex-pbx"  # the first that matches
    assert sip.trunk_for("127.0.0.3").name == "shared-pbx"
    assert sip.trunk_for("127.0.0.1") is None
    assert sip.trunk_for("not an address") is None
    assert [sip.is_trusted(h) for h in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "::1",
                                        "127.0.0.4", "pbx.example")] == [
        True, True, True, True, False, False]
    choose = config.tenant_for_call
    assert choose("127.0.0.2", "acme.example").name == "globex"  # the trunk's tenant wins
    assert choose("::1", None).name == "globex"
    assert choose("127.0.0.3", "globex.example").name == "globex"  # no tenant: the domain's
    assert choose("127.0.0.3", "acme.example").name == "acme"
    assert choose("127.0.0.1", "globex.example").name == "globex"  # no trunk: the domain's
    assert choose("127.0.0.1", "elsewhere.example").name == "acme"  # else the default
    assert choose("127.0.0.1", None).name == "acme"


def test_reload_keeps_a_changed_listen_address_and_applies_users(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    old = load_config(cfg.write())
    cfg.hub_port += 1
    cfg.users.append(User("1002"))
    new = load_config(cfg.write())
    assert changed_keys(old, new) == ["hub.listen", "users.extension", "users.tenant",
                                      "users.role", "users.password_hash"]
    applied = apply_reload(old, new)
    assert applied.hub.listen == old.hub.listen
    assert applied.users == new.users
    assert changed_keys(applied, new) == ["hub.listen"]


def test_reload_applies_a_new_media_timeout(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    old = load_config(cfg.write())
    new = load_config(_edit(cfg.write(), "[media]\n", '[media]\ntimeout = "5s"\n'))
    assert changed_keys(old, new) == ["media.timeout"]
    assert apply_reload(old, new).media.timeout == 5.0


def test_hash_password_from_stdin_verifies() -> None:
    result = _cli("hash-password", stdin="correct horse battery\n")
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert digest.startswith("$argon2id$")
    assert verify_password(digest, "correct horse battery")
    assert not verify_password(digest, "wrong horse battery")


def test_hash_password_refuses_short_passwords() -> None:
    result = _cli("hash-password", stdin="short\n")
    assert result.returncode == 2
    assert "at least 8 characters" in result.stderr


def test_version_and_help() -> None:
    version = _cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("voicedashd ")
    helptext = _cli("--help")
    assert helptext.returncode == 0
    for command in ("run", "check-config", "hash-password"):
        assert command in helptext.stdout


@pytest.mark.parametrize(("value", "problem"), [
    ("[]", "media.codecs: must name at least one codec of G722, PCMU, PCMA"),
    ('["PCMU", "OPUS"]', "media.codecs: unknown codec 'OPUS'; known: G722, PCMU, PCMA"),
    ('["PCMU", "pcmu"]', "media.codecs: PCMU is listed twice"),
    ('"PCMU"', "media.codecs: must be a list of codec names (G722, PCMU, PCMA)"),
])
def test_media_codecs_must_be_known_distinct_and_not_empty(good: Path, value: str,
                                                           problem: str) -> None:
    _edit(good, 'address = "127.0.0.1"', f'address = "127.0.0.1"\ncodecs = {value}')
    with pytest.raises(ConfigError) as info:
        load_config(good)
    assert info.value.problems == [problem]


def test_media_codecs_default_prefers_g722_and_any_case_is_read(good: Path) -> None:
    assert load_config(good).media.codecs == ("G722", "PCMU", "PCMA")
    _edit(good, 'address = "127.0.0.1"', 'address = "127.0.0.1"\ncodecs = ["pcma", "G722"]')
    assert load_config(good).media.codecs == ("PCMA", "G722")
