"""Structured logging: structlog to stderr as JSON lines (or console), one event name per line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .config import LogConfig
from .events import printable

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_SECRET_KEYS = frozenset({"password", "token", "access_token", "refresh_token", "secret",
                          "authorization", "jwt"})
_DTMF_KEYS = frozenset({"digit", "digits"})


def _redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace values of secret-looking keys so no token or password reaches a log line."""
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "[redacted]"
    return event_dict


def _redact_dtmf(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Hide the keys a caller pressed (often a PIN or a card number); the events keep them."""
    for key in event_dict.keys() & _DTMF_KEYS:
        event_dict[key] = "[redacted]"
    return event_dict


def _printable_values(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Strip control and bidi characters from text values: a SIP peer chooses some of them."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = printable(value, keep_newlines=key == "exception")
    return event_dict


def configure_logging(config: LogConfig) -> None:
    """Configure structlog (and stdlib logging from libraries) for the given level and format."""
    level = _LEVELS[config.level]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            *([] if config.dtmf_digits else [_redact_dtmf]),
            structlog.processors.format_exc_info,
            _printable_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (hypercorn, quart) log through stdlib logging; keep them quiet below warning.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, force=True,
                        format="%(name)s %(levelname)s %(message)s")
