"""Two full configs that differ in every key, and the README's reload column, for reload tests."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from tests.harness import DaemonConfig
from voicedashd.passwords import hash_password

README = Path(__file__).resolve().parents[1] / "README.md"
# Environment variables the changed config names in api_key_env; validation wants them set.
KEY_ENV = {"TEST_STT_KEY": "x", "TEST_TTS_KEY": "x", "TEST_LLM_KEY": "x"}
_ARRAYS = ("sip.trunks", "tenants", "users", "voicebot.overrides", "webhooks")
WEBHOOK_SECRETS = ("webhook-secret", "webhook-secret-2")


def readme_reload_column(readme: str | None = None) -> dict[str, str]:
    """Every key of README's configuration table and its "On reload" cell ("live"/"restart")."""
    text = README.read_text() if readme is None else readme
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        when = "live" if cells[3].startswith("live") else cells[3]
        for key in _row_keys(cells[0]):
            assert key not in table, f"{key} appears twice in README's table"
            table[key] = when
    return table


def _row_keys(cell: str) -> list[str]:
    """`a.b`, `a.c` / `a.b.c`, `.d` (a sibling of the previous key) / `[[a]] x, y` (fields)."""
    array = re.fullmatch(r"`\[\[([\w.]+)\]\] ([\w, ]+)`", cell)
    if array:
        return [f"{array.group(1)}.{name.strip()}" for name in array.group(2).split(",")]
    keys: list[str] = []
    for part in re.findall(r"`([^`]+)`", cell):
        keys.append(keys[-1].rsplit(".", 1)[0] + part if part.startswith(".") else part)
    return keys


def start_values(config: DaemonConfig) -> dict[str, Any]:
    """Every key at the value the daemon starts with (None: unset)."""
    _write_webhook_secrets(config)
    low, high = config.rtp_ports
    return {
        "sip.listen": f"127.0.0.1:{config.sip_port}",
        "sip.trusted": ["127.0.0.0/8"],
        "sip.trunks.name": ["pbx"],
        "sip.trunks.sources": [["127.0.0.2/32"]],
        "sip.trunks.tenant": ["acme"],
        "sip.public_address": None,
        "sip.user_agent": "voicedashd",
        "sip.answer_delay": "0s",
        "sip.untrusted_rate_limit": 5.0,
        "sip.untrusted_rate_burst": 20,
        "sip.untrusted_max_transactions": 256,
        "sip.max_tcp_connections": 256,
        "sip.max_tcp_connections_per_source": 16,
        "sip.tcp_idle_timeout": "5m",
        "sip.transfer_timeout": "30s",
        "media.address": "127.0.0.1",
        "media.public_address": None,
        "media.rtp_ports": f"{low}-{high}",
        "media.timeout": "30s",
        "media.jitter_buffer": "60ms",
        "media.allowed_peers": [],
        "media.relearn_after": "5s",
        "media.record_dir": None,
        "media.codecs": ["G722", "PCMU", "PCMA"],
        "api.listen": f"127.0.0.1:{config.api_port}",
        "api.cors_origins": [],
        "api.tls_cert": None,
        "api.tls_key": None,
        "api.trusted_proxies": [],
        "hub.listen": f"127.0.0.1:{config.hub_port}",
        "hub.origins": [config.api_url],
        "hub.max_subscriptions": 10,
        "hub.queue_size": 256,
        "hub.max_message_size": 65536,
        "hub.rate_limit": 20.0,
        "hub.rate_burst": 40,
        "hub.ping_interval": "20s",
        "hub.ping_timeout": "10s",
        "hub.send_buffer": 262144,
        "hub.public_url": None,
        "store.path": "store.sqlite3",
        "recordings.dir": None,
        "auth.jwt_secret_file": "jwt-secret",
        "auth.issuer": "voicedashd",
        "auth.audience": "voicedashd-dashboard",
        "auth.access_token_ttl": "15m",
        "auth.refresh_token_ttl": "8h",
        "daemon.shutdown_grace": "5s",
        "log.level": "debug",
        "log.format": "json",
        "log.dtmf_digits": False,
        "tenants.name": ["acme", "globex"],
        "tenants.domains": [["acme.example"], ["globex.example"]],
        "tenants.default": [False, False],
        "tenants.transfer_target": ["sip:{extension}@{pbx_host}", "sip:{extension}@{pbx_host}"],
        "tenants.record": [False, False],
        "tenants.record_notice": ["This call is recorded.", "This call is recorded."],
        "tenants.retention_days": [30, 30],
        "users.extension": ["1001", "1002"],
        "users.tenant": ["acme", "acme"],
        "users.role": ["user", "admin"],
        "users.password_hash": [_hashed("first password"), _hashed("second password")],
        "voicebot.knowledge": None,
        "voicebot.greeting": "Hello, extension {extension}.",
        "voicebot.fallback": "I don't know.",
        "voicebot.farewell": "Goodbye.",
        "voicebot.system_prompt": "Answer briefly.",
        "voicebot.transfer_line": "Putting you through.",
        "voicebot.transfer_failed_line": "That did not work.",
        "voicebot.top_k": 3,
        "voicebot.answer_sentences": 2,
        "voicebot.vad_stop": "300ms",
        "voicebot.barge_in": True,
        "voicebot.speech_workers": 2,
        "voicebot.processors": [],
        "voicebot.stt.engine": "whisper",
        "voicebot.stt.model": None,
        "voicebot.stt.language": "en",
        "voicebot.stt.base_url": None,
        "voicebot.stt.api_key_env": None,
        "voicebot.tts.engine": "hibari",
        "voicebot.tts.voice": None,
        "voicebot.tts.speed": 170,
        "voicebot.tts.model": None,
        "voicebot.tts.base_url": None,
        "voicebot.tts.api_key_env": None,
        "voicebot.llm.engine": "none",
        "voicebot.llm.model": None,
        "voicebot.llm.base_url": None,
        "voicebot.llm.api_key_env": None,
        "voicebot.llm.temperature": 0.3,
        "voicebot.llm.max_tokens": 150,
        "voicebot.overrides.tenant": ["globex"],
        "voicebot.overrides.extension": [None],
        "voicebot.overrides.knowledge": [None],
        "voicebot.overrides.greeting": [None],
        "voicebot.overrides.fallback": [None],
        "voicebot.overrides.farewell": [None],
        "voicebot.overrides.system_prompt": [None],
        # Port 9 (discard) has no listener on loopback: a delivery would be refused, retried.
        "webhooks.url": ["http://127.0.0.1:9/hooks"],
        "webhooks.secret_file": ["webhook-secret"],
        "webhooks.events": [["call_ended"]],
        "webhooks.tenant": [None],
        "webhooks.retry_base": ["30s"],
        "voicebot.overrides.transfer_line": [None],
        "voicebot.overrides.transfer_failed_line": [None],
    }


def _write_webhook_secrets(config: DaemonConfig) -> None:
    for name in WEBHOOK_SECRETS:
        (config.dir / name).write_text(f"{name}: a webhook secret of at least 32 bytes")


def changed_values(config: DaemonConfig) -> dict[str, Any]:
    """Every key at a valid value different from start_values (files and folders created)."""
    (config.dir / "knowledge").mkdir(exist_ok=True)
    (config.dir / "jwt-secret-2").write_text("another secret of at least 32 bytes, for tests")
    _write_webhook_secrets(config)
    low, high = config.rtp_ports
    return {
        "sip.listen": f"127.0.0.1:{config.sip_port + 1}",
        "sip.trusted": ["127.0.0.0/8", "10.0.0.0/8"],
        "sip.trunks.name": ["pbx-2"],
        "sip.trunks.sources": [["127.0.0.3/32", "10.1.0.0/16"]],
        "sip.trunks.tenant": ["initech"],
        "sip.public_address": "127.0.0.1",
        "sip.user_agent": "voicedashd-reloaded",
        "sip.answer_delay": "100ms",
        "sip.untrusted_rate_limit": 6.0,
        "sip.untrusted_rate_burst": 21,
        "sip.untrusted_max_transactions": 257,
        "sip.max_tcp_connections": 257,
        "sip.max_tcp_connections_per_source": 17,
        "sip.tcp_idle_timeout": "4m",
        "sip.transfer_timeout": "20s",
        "media.address": "127.0.0.2",
        "media.public_address": "127.0.0.1",
        "media.rtp_ports": f"{low}-{high - 2}",
        "media.timeout": "20s",
        "media.jitter_buffer": "80ms",
        "media.allowed_peers": ["192.0.2.0/24"],
        "media.relearn_after": "2s",
        "media.record_dir": "recordings",
        "media.codecs": ["PCMA", "PCMU"],
        "api.listen": f"127.0.0.1:{config.api_port + 1}",
        "api.cors_origins": ["https://dash.example.com"],
        "api.tls_cert": "cert.pem",
        "api.tls_key": "key.pem",
        "api.trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
        "hub.listen": f"127.0.0.1:{config.hub_port + 1}",
        "hub.origins": [config.api_url, "https://dash.example.com"],
        "hub.max_subscriptions": 11,
        "hub.queue_size": 128,
        "hub.max_message_size": 4096,
        "hub.rate_limit": 30.0,
        "hub.rate_burst": 50,
        "hub.ping_interval": "25s",
        "hub.ping_timeout": "12s",
        "hub.send_buffer": 131072,
        "hub.public_url": "wss://dash.example.com/ws",
        "store.path": "other.sqlite3",
        "recordings.dir": "other-recordings",
        "auth.jwt_secret_file": "jwt-secret-2",
        "auth.issuer": "voicedashd-reloaded",
        "auth.audience": "voicedashd-dashboard-reloaded",
        "auth.access_token_ttl": "10m",
        "auth.refresh_token_ttl": "4h",
        "daemon.shutdown_grace": "6s",
        "log.level": "info",
        "log.format": "console",
        "log.dtmf_digits": True,
        "tenants.name": ["acme", "initech"],
        "tenants.domains": [["acme.example", "acme.test"], ["initech.example"]],
        "tenants.default": [True, False],
        "tenants.transfer_target": ["sip:{extension}@pbx.acme.example",
                                    "sips:{extension}@{pbx_host}"],
        "tenants.record": [True, False],
        "tenants.record_notice": ["Calls to {extension} are recorded.", "We record calls."],
        "tenants.retention_days": [7, 90],
        "users.extension": ["1001", "1003"],
        "users.tenant": ["acme", "initech"],
        "users.role": ["admin", "admin"],
        "users.password_hash": [_hashed("first password"), _hashed("third password")],
        "voicebot.knowledge": "knowledge",
        "voicebot.greeting": "Hi, {caller}.",
        "voicebot.fallback": "No idea.",
        "voicebot.farewell": "Bye.",
        "voicebot.system_prompt": "Answer in one sentence.",
        "voicebot.transfer_line": "One moment.",
        "voicebot.transfer_failed_line": "Sorry, nobody is free.",
        "voicebot.top_k": 4,
        "voicebot.answer_sentences": 3,
        "voicebot.vad_stop": "400ms",
        "voicebot.barge_in": False,
        "voicebot.speech_workers": 3,
        "voicebot.processors": ["tests.voicebot_plugins:not_loaded_before_a_call"],
        "voicebot.stt.engine": "pocketsphinx",
        "voicebot.stt.model": "tiny.en",
        "voicebot.stt.language": "en-us",
        "voicebot.stt.base_url": "http://127.0.0.1:9/stt",
        "voicebot.stt.api_key_env": "TEST_STT_KEY",
        "voicebot.tts.engine": "espeak",
        "voicebot.tts.voice": "en-us",
        "voicebot.tts.speed": 180,
        "voicebot.tts.model": "voice-model",
        "voicebot.tts.base_url": "http://127.0.0.1:9/tts",
        "voicebot.tts.api_key_env": "TEST_TTS_KEY",
        "voicebot.llm.engine": "openai",
        "voicebot.llm.model": "test-model",
        "voicebot.llm.base_url": "http://127.0.0.1:9/v1",
        "voicebot.llm.api_key_env": "TEST_LLM_KEY",
        "voicebot.llm.temperature": 0.5,
        "voicebot.llm.max_tokens": 100,
        "voicebot.overrides.tenant": ["initech"],
        "voicebot.overrides.extension": ["1003"],
        "voicebot.overrides.knowledge": ["knowledge"],
        "voicebot.overrides.greeting": ["Hello from initech."],
        "voicebot.overrides.fallback": ["Ask initech."],
        "voicebot.overrides.farewell": ["Bye from initech."],
        "voicebot.overrides.system_prompt": ["Speak for initech."],
        "webhooks.url": ["http://127.0.0.1:9/hooks-2"],
        "webhooks.secret_file": ["webhook-secret-2"],
        "webhooks.events": [["call_ended", "call_summary"]],
        "webhooks.tenant": ["initech"],
        "webhooks.retry_base": ["1m"],
        "voicebot.overrides.transfer_line": ["Initech will take it."],
        "voicebot.overrides.transfer_failed_line": ["Initech is busy."],
    }


def render(values: dict[str, Any]) -> str:
    """TOML text setting each key to its value (None: left unset)."""
    tables: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, list[Any]]] = {}
    for key, value in values.items():
        section, name = key.rsplit(".", 1)
        if section in _ARRAYS:
            arrays.setdefault(section, {})[name] = value
        else:
            tables.setdefault(section, {})[name] = value
    lines: list[str] = []
    for section, fields in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml(v)}" for name, v in fields.items() if v is not None]
    for section, columns in arrays.items():
        for row in zip(*columns.values(), strict=True):
            lines.append(f"[[{section}]]")
            lines += [f"{name} = {_toml(v)}" for name, v in zip(columns, row, strict=True)
                      if v is not None]
    return "\n".join(lines) + "\n"


@cache
def _hashed(password: str) -> str:
    return hash_password(password)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)
