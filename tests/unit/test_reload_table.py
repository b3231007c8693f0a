"""The one reload table: README, config models and reload agree on what each key does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import make_config
from tests.reload_cases import (
    KEY_ENV,
    changed_values,
    readme_reload_column,
    render,
    start_values,
)
from voicedashd.config import (
    RELOAD,
    Config,
    Reload,
    apply_reload,
    changed_keys,
    config_value,
    file_keys,
    parse_config,
)


def _load(directory: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    path = directory / "voicedashd.toml"
    path.write_text(text)
    return parse_config(text, path=path, environ=KEY_ENV if environ is None else environ)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Config, Config]:
    """A running config and a loaded one that differs from it in every key."""
    cfg = make_config(tmp_path)
    cfg.write()
    return (_load(tmp_path, render(start_values(cfg))),
            _load(tmp_path, render(changed_values(cfg))))


def test_every_file_key_is_in_the_table_once() -> None:
    assert sorted(RELOAD) == sorted(file_keys())


def test_readme_table_lists_every_key_with_the_tables_reload_behaviour() -> None:
    readme = readme_reload_column()
    assert sorted(readme) == sorted(RELOAD)
    assert {k: v for k, v in readme.items() if v != RELOAD[k]} == {}


def test_readme_rows_with_several_keys_are_read_as_each_key() -> None:
    text = ("## Configuration\n| Key | Default | Meaning | On reload |\n|---|---|---|---|\n"
            "| `a.b`, `a.c` | x | y | restart |\n"
            "| `a.s.e`, `.m` | x | y | live (new calls) |\n"
            "| `[[t]] n, d` | x | y | live² |\n## Next\n| `z.z` | x | y | live |\n")
    assert readme_reload_column(text) == {"a.b": "restart", "a.c": "restart", "a.s.e": "live",
                                          "a.s.m": "live", "t.n": "live", "t.d": "live"}


def test_the_cases_cover_every_key(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert sorted(start_values(cfg)) == sorted(RELOAD)
    assert sorted(changed_values(cfg)) == sorted(RELOAD)


def test_changed_keys_sees_every_key(pair: tuple[Config, Config]) -> None:
    running, loaded = pair
    assert changed_keys(running, loaded) == list(RELOAD)
    assert changed_keys(running, running) == []


def test_reload_applies_live_keys_and_keeps_restart_keys(pair: tuple[Config, Config]) -> None:
    running, loaded = pair
    applied = apply_reload(running, loaded)
    for key, when in RELOAD.items():
        source = loaded if when is Reload.LIVE else running
        assert config_value(applied, key) == config_value(source, key), key
    assert applied.jwt_secret == running.jwt_secret
    assert changed_keys(running, applied) == [k for k, w in RELOAD.items() if w is Reload.LIVE]
    assert changed_keys(applied, loaded) == [k for k, w in RELOAD.items()
                                             if w is Reload.RESTART]


def test_a_new_secret_from_the_environment_is_kept_and_reported(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.write()
    text = render(start_values(cfg))
    running = _load(tmp_path, text, KEY_ENV | {"VOICEDASHD_JWT_SECRET": "a" * 40})
    loaded = _load(tmp_path, text, KEY_ENV | {"VOICEDASHD_JWT_SECRET": "b" * 40})
    assert changed_keys(running, loaded) == ["auth.jwt_secret_file"]
    assert apply_reload(running, loaded).jwt_secret == b"a" * 40


def test_values_of_list_entries_are_read_per_entry(pair: tuple[Config, Config]) -> None:
    running, _ = pair
    assert config_value(running, "tenants.name") == ("acme", "globex")
    assert config_value(running, "voicebot.overrides.extension") == (None,)
