"""Checks the systemd unit and sysusers file with systemd's own tools."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "voicedashd.service"
SYSUSERS = SYSTEMD_DIR / "voicedashd.sysusers"


def systemd_tool(name: str) -> str:
    """Path of a systemd command-line tool, failing the test when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install systemd`")
    return path


def parse_unit(text: str) -> configparser.ConfigParser:
    """Parse unit text the way systemd reads keys: case-sensitive, no interpolation."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[method-assign]
    parser.read_string(text)
    return parser


def with_existing_exec_start(text: str) -> str:
    """Swap ExecStart's binary for one that exists here, since verify checks it; keep the rest."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1, "the unit must have exactly one ExecStart= line"
    _binary, _, arguments = lines[starts[0]].removeprefix("ExecStart=").partition(" ")
    lines[starts[0]] = f"ExecStart={sys.executable} {arguments}"
    return "".join(lines)


def verify_problems(unit_path: Path) -> list[str]:
    """Run `systemd-analyze verify`; return its complaints (exit status and stderr lines)."""
    result = subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(result.stderr, file=sys.stderr)
    problems = [line for line in result.stderr.splitlines() if unit_path.name in line]
    if result.returncode != 0:
        problems.append(f"systemd-analyze verify exited {result.returncode}")
    return problems


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit_path = tmp_path / UNIT.name
    unit_path.write_text(with_existing_exec_start(UNIT.read_text()))
    assert verify_problems(unit_path) == []


def test_verify_check_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = with_existing_exec_start(UNIT.read_text()).replace(
        "ProtectSystem=strict", "ProtectSystem=sturdy\nNoSuchSetting=1"
    )
    unit_path = tmp_path / UNIT.name
    unit_path.write_text(broken)
    problems = verify_problems(unit_path)
    assert any("Unknown key 'NoSuchSetting'" in line for line in problems), problems
    assert any("sturdy" in line for line in problems), problems


def test_only_exec_start_is_rewritten_for_verify() -> None:
    original = parse_unit(UNIT.read_text())
    rewritten = parse_unit(with_existing_exec_start(UNIT.read_text()))
    assert rewritten["Service"]["ExecStart"] == (
        f"{sys.executable} run --config /etc/voicedashd/voicedashd.toml"
    )
    del original["Service"]["ExecStart"], rewritten["Service"]["ExecStart"]
    assert {name: dict(section) for name, section in original.items()} == {
        name: dict(section) for name, section in rewritten.items()
    }


def test_unit_has_the_required_directives() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30"
    assert service["ExecStart"] == (
        "/opt/voicedashd/.venv/bin/voicedashd run --config /etc/voicedashd/voicedashd.toml"
    )
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["StateDirectory"] == "voicedashd"
    assert service["ConfigurationDirectory"] == "voicedashd"
    assert service["User"] == "voicedashd"
    assert service["Group"] == "voicedashd"
    assert service["ProtectSystem"] == "strict"
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["NoNewPrivileges"] == "true"
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert service["CapabilityBoundingSet"] == ""
    assert "MemoryDenyWriteExecute" not in service


def test_sysusers_creates_the_units_user_and_group(tmp_path: Path) -> None:
    # --root writes a throwaway /etc/passwd and /etc/group, leaving the host's untouched.
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [systemd_tool("systemd-sysusers"), f"--root={tmp_path}", "-"],
        input=SYSUSERS.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    service = parse_unit(UNIT.read_text())["Service"]
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").open()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").open()}
    user = passwd[service["User"]]
    assert int(user[2]) < 1000, "voicedashd must be a system account"
    assert user[6].strip() == "/usr/sbin/nologin"
    assert groups[service["Group"]][2] == user[3], "the user's primary group must be Group="
