"""Command line: run, check-config, hash-password."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

import trio

from . import __version__
from .config import ConfigError, load_config
from .errors import ListenerError
from .passwords import hash_password
from .store import StoreError

EXIT_CONFIG = 2
EXIT_STARTUP = 1
SWITCH_INTERVAL = 0.001  # seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicedashd",
        description="AI voice bot beside a PBX, with a live per-extension call dashboard.")
    parser.add_argument("--version", action="version", version=f"voicedashd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", required=True, type=Path, metavar="PATH",
                     help="the TOML configuration file")
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", type=Path, metavar="PATH")
    commands.add_parser("hash-password",
                        help="read a password (stdin or prompt) and print its argon2id hash")
    return parser


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _run(path: Path) -> int:
    from threadpoolctl import threadpool_limits

    from .daemon import serve  # imported here so check-config stays quick

    # Speech models run in the daemon's own worker threads (voicebot.speech_workers). numpy's
    # BLAS would add a spinning thread of its own per call to it, taking a core from the event
    # loop that paces every call's RTP and from the other workers: measured on 2 cores, eight
    # callers' finals came 1.0-1.9 s after they stopped speaking instead of 0.6-0.7 s.
    threadpool_limits(limits=1, user_api="blas")
    # A worker thread in Python code holds the GIL for up to the switch interval before the
    # event loop gets it back; 5 ms (the default) is a quarter of an RTP packet's 20 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    failures: list[Exception] = []
    try:
        trio.run(serve, config)
    except* (ListenerError, StoreError) as group:
        failures.extend(group.exceptions)
    for exc in failures:
        print(f"voicedashd: error: {exc}", file=sys.stderr)
    return EXIT_STARTUP if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the voicedashd command."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        try:
            load_config(args.path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.path}: ok")
        return 0
    try:
        print(hash_password(_read_password()))
    except ValueError as exc:
        print(f"voicedashd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
