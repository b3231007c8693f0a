"""The dashboard page route's pure parts: which hub URL the page gets, its CSP, its files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voicedashd.api.page import HUB_PLACEHOLDER, hub_url, load_assets, page_csp
from voicedashd.config import Config, ConfigError, parse_config

SECRET = {"VOICEDASHD_JWT_SECRET": "s" * 40}


def config(tmp_path: Path, hub_listen: str = "127.0.0.1:8481", hub: str = "") -> Config:
    text = "\n".join([
        "[sip]", 'listen = "127.0.0.1:5070"', "[api]", 'listen = "127.0.0.1:8480"',
        "[hub]", f'listen = "{hub_listen}"', hub, "[store]", 'path = "db.sqlite3"',
        "[[tenants]]", 'name = "acme"'])
    return parse_config(text, path=tmp_path / "voicedashd.toml", environ=SECRET)


@pytest.mark.parametrize(("listen", "host_header", "expected"), [
    ("127.0.0.1:8481", "127.0.0.1:8480", "ws://127.0.0.1:8481/ws"),
    ("127.0.0.1:8481", "evil.example", "ws://127.0.0.1:8481/ws"),    # a fixed host wins
    ("[::1]:8481", None, "ws://[::1]:8481/ws"),
    ("0.0.0.0:8481", "pbx.example.com:8480", "ws://pbx.example.com:8481/ws"),
    ("0.0.0.0:8481", "PBX.example.com", "ws://pbx.example.com:8481/ws"),
    ("[::]:8481", "[2001:db8::5]:8480", "ws://[2001:db8::5]:8481/ws"),
    ("0.0.0.0:8481", "x; script-src *", "ws://127.0.0.1:8481/ws"),    # not a host: ignored
    ("0.0.0.0:8481", "a\"b", "ws://127.0.0.1:8481/ws"),
    ("0.0.0.0:8481", None, "ws://127.0.0.1:8481/ws"),
])
def test_hub_url_comes_from_the_listen_address(tmp_path: Path, listen: str,
                                               host_header: str | None, expected: str) -> None:
    assert hub_url(config(tmp_path, listen), host_header) == expected


def test_public_url_wins_and_is_validated(tmp_path: Path) -> None:
    public = config(tmp_path, hub='public_url = "wss://dash.example.com/live/ws"')
    assert hub_url(public, "127.0.0.1:8480") == "wss://dash.example.com/live/ws"
    for bad in ("https://dash.example.com/ws", "wss://dash.example.com/ws?token=x",
                "wss:///ws", "dash.example.com"):
        with pytest.raises(ConfigError, match=r"hub\.public_url: .*wss://dash\.example\.com/ws"):
            config(tmp_path, hub=f'public_url = "{bad}"')


def test_the_csp_allows_only_the_page_itself_and_the_hub() -> None:
    csp = page_csp("wss://dash.example.com:8443/live/ws")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["connect-src"] == "'self' wss://dash.example.com:8443"
    assert directives["default-src"] == directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["media-src"] == "'self' blob:"  # recordings, played from a fetched Blob
    assert "unsafe" not in csp


def test_the_page_files_are_package_data_without_inline_code() -> None:
    index, assets = load_assets()
    assert HUB_PLACEHOLDER in index
    assert set(assets) >= {"app.js", "style.css", "icon.svg"}
    assert assets["app.js"].content_type.startswith("text/javascript")
    assert "<script>" not in index and " style=" not in index
    assert not re.search(r"\son[a-z]+=", index, re.IGNORECASE)     # no inline handlers
    for name in ("app.js", "style.css"):
        text = assets[name].body.decode()
        assert "http://" not in text and "https://" not in text, name   # nothing elsewhere
    assert "innerHTML" not in assets["app.js"].body.decode()            # text is never parsed


def test_every_module_the_page_imports_is_served() -> None:
    _, assets = load_assets()
    scripts = {name: asset.body.decode() for name, asset in assets.items() if name.endswith(".js")}
    imported = {name for text in scripts.values()
                for name in re.findall(r'^import .* from "\./([^"]+)";$', text, re.MULTILINE)}
    assert "notify.js" in imported
    assert imported <= set(scripts), imported - set(scripts)
    for name in imported:
        assert assets[name].content_type.startswith("text/javascript"), name
        text = scripts[name]
        assert "http://" not in text and "https://" not in text and "innerHTML" not in text, name
