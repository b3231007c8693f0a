"""[voicebot]: offline defaults, engine selection, overrides, one-line errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.config_text import MINIMAL
from voicedashd.config import Config, ConfigError, parse_config

BASE = MINIMAL + """
[[tenants]]
name = "globex"
"""
ENV = {"VOICEDASHD_JWT_SECRET": "s" * 48}


def load(tmp_path: Path, voicebot: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(BASE + voicebot, path=tmp_path / "voicedashd.toml",
                        environ=ENV | (environ or {}))


def problems(tmp_path: Path, voicebot: str, environ: dict[str, str] | None = None
             ) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        load(tmp_path, voicebot, environ)
    return failed.value.problems


def test_defaults_work_offline(tmp_path: Path) -> None:
    bot = load(tmp_path, "").voicebot
    assert (bot.stt.engine, bot.tts.engine, bot.llm.engine) == ("whisper", "hibari", "none")
    assert bot.knowledge is None and bot.processors == ()
    assert "{extension}" in bot.greeting and "{extension}" in bot.fallback


def test_knowledge_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "kb").mkdir()
    (tmp_path / "globex-kb").mkdir()
    bot = load(tmp_path, '[voicebot]\nknowledge = "kb"\n[[voicebot.overrides]]\n'
                         'tenant = "globex"\nknowledge = "globex-kb"\n').voicebot
    assert bot.knowledge == tmp_path / "kb"
    assert bot.knowledge_paths() == [tmp_path / "kb", tmp_path / "globex-kb"]


def test_overrides_extension_beats_tenant_beats_global(tmp_path: Path) -> None:
    bot = load(tmp_path, """
[voicebot]
greeting = "Hi."
fallback = "Sorry."
[[voicebot.overrides]]
tenant = "acme"
extension = "1001"
greeting = "Hi, this is 1001."
[[voicebot.overrides]]
tenant = "acme"
greeting = "Hi, acme here."
fallback = "Acme will call back."
""").voicebot
    assert (bot.for_call("acme", "1001").greeting,
            bot.for_call("acme", "1001").fallback) == ("Hi, this is 1001.", "Acme will call back.")
    assert bot.for_call("acme", "1002").greeting == "Hi, acme here."
    assert bot.for_call("globex", "1001").greeting == "Hi."


@pytest.mark.parametrize(("voicebot", "expected"), [
    ('[voicebot]\ngreeting = "Hi {name}"', "voicebot.greeting: unknown placeholder {name}"),
    ('[voicebot]\nknowledge = "missing"', "voicebot.knowledge: "),
    ('[voicebot.llm]\nengine = "openai"', "voicebot.llm: model: required"),
    ('[voicebot.stt]\nengine = "vosk"', "voicebot.stt.engine: "),
    ('[voicebot]\nprocessors = ["no colon"]', "voicebot.processors: expected"),
    ('[voicebot]\ntop_k = 0', "voicebot.top_k: "),
    ('[voicebot]\nvad_stop = "5s"', "voicebot.vad_stop: "),
    ("[[voicebot.overrides]]\ntenant = \"initech\"", "voicebot.overrides[0].tenant: no tenant"),
    ("[voicebot]\ncolour = 1", "voicebot.colour: unknown key"),
])
def test_mistakes_are_named(tmp_path: Path, voicebot: str, expected: str) -> None:
    found = problems(tmp_path, voicebot)
    assert any(p.startswith(expected) for p in found), found


def test_an_api_key_is_taken_from_the_environment(tmp_path: Path) -> None:
    llm = ('[voicebot.llm]\nengine = "openai"\nmodel = "llama3"\n'
           'base_url = "http://127.0.0.1:11434/v1"\napi_key_env = "LLM_KEY"\n')
    assert problems(tmp_path, llm) == [
        "voicebot.llm.api_key_env: environment variable LLM_KEY is not set"]
    config = load(tmp_path, llm, {"LLM_KEY": "k-123"})
    assert config.voicebot.llm.model == "llama3"
    assert "k-123" not in repr(config)


def test_self_hosted_services_need_no_key(tmp_path: Path) -> None:
    bot = load(tmp_path, '[voicebot.llm]\nengine = "openai"\nmodel = "qwen2.5"\n'
                         'base_url = "http://127.0.0.1:8000/v1"\n'
                         '[voicebot.stt]\nengine = "openai"\nbase_url = "http://127.0.0.1:9000/v1"'
                         '\nmodel = "whisper-1"\n').voicebot
    assert bot.llm.api_key_env is None and bot.stt.engine == "openai"


def test_every_key_is_documented() -> None:
    """Each [voicebot] key appears in the example config and in the README's config table."""
    from voicedashd.config import (
        LlmConfig,
        SttConfig,
        TtsConfig,
        VoicebotConfig,
        VoicebotOverride,
    )

    repo = Path(__file__).resolve().parents[2]
    example = (repo / "config" / "voicedashd.toml").read_text()
    cells = [line.split("|")[1] for line in (repo / "README.md").read_text().splitlines()
             if line.startswith(("| `voicebot.", "| `[[voicebot."))]
    sections = {"stt": SttConfig, "tts": TtsConfig, "llm": LlmConfig,
                "overrides": VoicebotOverride, "": VoicebotConfig}
    for section, model in sections.items():
        rows = [c for c in cells if f"voicebot.{section}" in c] if section else [
            c for c in cells if not any(f"voicebot.{s}" in c for s in sections if s)]
        words = {w for row in rows for w in re.findall(r"[a-z_]+", row)}
        for key in model.model_fields:
            if key in sections:
                continue
            assert f"{key} =" in example, f"{section or 'voicebot'}.{key}: not in the example"
            assert key in words, f"{section or 'voicebot'}.{key}: not in the README table"
