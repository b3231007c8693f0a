"""The Refer-To template of [[tenants]] transfer_target: rendering, escaping, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import make_config
from voicedashd.config import ConfigError, load_config
from voicedashd.sip.refer_to import (
    DEFAULT_TRANSFER_TARGET,
    InvalidTransferTarget,
    check_transfer_target,
    escape,
    render_refer_to,
)
from voicedashd.sip.uri import SipUri, parse_uri


def test_the_default_names_the_extension_at_the_pbx() -> None:
    assert render_refer_to(DEFAULT_TRANSFER_TARGET, extension="1001", pbx_host="192.0.2.10",
                           tenant="acme") == "sip:1001@192.0.2.10"


def test_an_ipv6_pbx_is_bracketed() -> None:
    uri = render_refer_to(DEFAULT_TRANSFER_TARGET, extension="1001", pbx_host="2001:db8::5",
                          tenant="acme")
    assert uri == "sip:1001@[2001:db8::5]"
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri) and parsed.host == "2001:db8::5"


@pytest.mark.parametrize(("extension", "escaped"), [
    ("*97", "*97"),
    ("#1", "%231"),
    ("10 01", "10%2001"),
    ("1001>;x=y", "1001%3E%3Bx%3Dy"),
    ("1001?Subject=hi", "1001%3FSubject%3Dhi"),
    ("1001\r\nVia: x", "1001%0D%0AVia%3A%20x"),
    ("anna@other", "anna%40other"),
    ("mü", "m%C3%BC"),
])
def test_values_are_escaped_so_they_cannot_change_the_uri(extension: str, escaped: str) -> None:
    assert escape(extension) == escaped
    uri = render_refer_to("sip:{extension}@pbx.example;transport=tcp", extension=extension,
                          pbx_host="192.0.2.10", tenant="acme")
    parsed = parse_uri(uri)
    assert isinstance(parsed, SipUri)
    assert parsed.user == extension  # the value comes back whole, as the user part
    assert parsed.host == "pbx.example" and parsed.params == {"transport": "tcp"}
    assert not parsed.headers


@pytest.mark.parametrize(("template", "problem"), [
    ("sip:{who}@{pbx_host}", "unknown placeholder {who}"),
    ("sip:{0}@{pbx_host}", "unknown placeholder {0}"),
    ("sip:{extension.real}@x", "unknown placeholder {extension.real}"),
    ("sip:{extension@{pbx_host}", "bad placeholder syntax"),
    ("tel:{extension}", "must be a sip: or sips: URI"),
    ("http://{pbx_host}/{extension}", "URI scheme"),
    ("{extension}", "no URI scheme"),
    ("sip:{extension}@pbx example", "whitespace or delimiter"),
])
def test_bad_templates_are_refused(template: str, problem: str) -> None:
    with pytest.raises(InvalidTransferTarget) as info:
        check_transfer_target(template)
    assert problem in str(info.value)


def test_good_templates_pass() -> None:
    for template in (DEFAULT_TRANSFER_TARGET, "sips:{extension}@pbx.{tenant}.example:5061",
                     "sip:queue-{tenant}@{pbx_host}"):
        assert check_transfer_target(template) == template


def test_config_names_the_key_of_a_bad_template(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    path = config.write()
    text = path.read_text().replace('name = "acme"',
                                    'name = "acme"\ntransfer_target = "tel:{extension}"', 1)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0] == ("tenants[0].transfer_target: must be a sip: or sips: "
                                      "URI, got 'tel:1001'")


def test_config_reads_the_template_and_the_timeout(tmp_path: Path) -> None:
    path = make_config(tmp_path).write()
    text = path.read_text().replace(
        'name = "acme"', 'name = "acme"\ntransfer_target = "sip:{extension}@pbx.acme.example"', 1)
    path.write_text(text)
    config = load_config(path)
    assert config.tenants[0].transfer_target == "sip:{extension}@pbx.acme.example"
    assert config.sip.transfer_timeout == 30.0
    assert config.voicebot.transfer_line and config.voicebot.transfer_failed_line
    assert config.tenant_named("acme") is config.tenants[0]
    assert config.tenant_named("nobody") is None
