"""[[webhooks]]: validation, the secret read from its file (and never shown), reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import DaemonConfig, make_config
from voicedashd.config import (
    ConfigError,
    apply_reload,
    changed_keys,
    load_config,
    webhook_event_names,
)

SECRET = b"webhook secret of at least 32 bytes, for tests"


def _config(tmp_path: Path, hook: str, secret: bytes = SECRET) -> DaemonConfig:
    (tmp_path / "hook-secret").write_bytes(secret + b"\n")
    config = make_config(tmp_path)
    config.extra = "[[webhooks]]\n" + hook
    config.write()
    return config


GOOD = ('url = "https://hooks.example.com/voicedashd?key=abc"\n'
        'secret_file = "hook-secret"\nevents = ["call_ended", "call_summary"]\n')


def test_a_webhook_is_loaded_with_its_secret(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, GOOD + 'tenant = "acme"\n').path)
    (hook,) = config.webhooks
    assert hook.url == "https://hooks.example.com/voicedashd?key=abc"
    assert hook.secret_file == tmp_path / "hook-secret"
    assert hook.secret == SECRET
    assert hook.events == ("call_ended", "call_summary")
    assert hook.tenant == "acme"
    assert hook.retry_base == 30.0
    assert SECRET.decode() not in repr(hook) and SECRET.decode() not in repr(config)


def test_call_summary_and_every_event_of_events_py_are_known_names() -> None:
    names = webhook_event_names()
    assert {"call_started", "call_ended", "stt_transcript", "tts_started", "dtmf",
            "call_summary"} <= set(names)
    assert "call_event" not in names


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        (GOOD.replace("https://hooks.example.com", "ftp://hooks.example.com"),
         "webhooks[0].url: expected an http:// or https:// URL"),
        (GOOD.replace("https://hooks.example.com", "https://"),
         "webhooks[0].url: expected an http:// or https:// URL"),
        (GOOD.replace("https://", "https://user:pw@"),
         "webhooks[0].url: must not hold credentials"),
        (GOOD.replace("example.com", "example.com:99999"),
         "webhooks[0].url: port of"),
        (GOOD.replace('"call_ended"', '"call_endd"'),
         "webhooks[0].events: unknown event 'call_endd'; known: "),
        (GOOD.replace('"call_ended", "call_summary"', ""),
         "webhooks[0].events:"),
        (GOOD.replace('"call_summary"', '"call_ended"'),
         "webhooks[0].events: 'call_ended' is listed twice"),
        (GOOD + 'tenant = "nobody"\n', "webhooks[0].tenant: no tenant named 'nobody'"),
        (GOOD + 'retry_base = "10ms"\n', 'webhooks[0].retry_base: must be between "100ms"'),
        (GOOD.replace("hook-secret", "missing-secret"),
         "webhooks[0].secret_file: cannot read"),
        (GOOD + "secret = 'inline'\n", "webhooks[0].secret: unknown key"),
        (GOOD + "[[webhooks]]\n" + GOOD, "webhooks[1].url: "),
    ],
)
def test_a_bad_webhook_is_one_line_naming_the_key(tmp_path: Path, hook: str,
                                                  expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, hook).path)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_a_short_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, GOOD, secret=b"short but secret").path)
    assert caught.value.problems == [
        "webhooks[0].secret_file: secret must be at least 32 bytes, got 16"]
    assert "short but secret" not in str(caught.value)


def test_a_reload_puts_new_webhooks_and_secrets_in_force(tmp_path: Path) -> None:
    config = _config(tmp_path, GOOD)
    running = load_config(config.path)
    (tmp_path / "hook-secret").write_bytes(b"n" * 40)
    config.extra = config.extra.replace('"call_ended", ', "")
    config.write()
    loaded = load_config(config.path)
    applied = apply_reload(running, loaded)
    assert changed_keys(running, applied) == ["webhooks.events"]
    assert applied.webhooks[0].events == ("call_summary",)
    assert applied.webhooks[0].secret == b"n" * 40
