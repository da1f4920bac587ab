"""Logging: structlog to stdout, one JSON object per line (systemd's journal collects it).

Every event carries an ISO-8601 UTC timestamp, the level, the event name and whatever context
was bound (``actor``, ``portfolio``…). On a terminal the same events render for humans.

A redaction processor runs last before rendering: values under secret-looking keys are replaced,
passwords inside URLs are masked and :class:`~daemon.config.Secret` objects render as ``***``.
It is a safety net; code must still never log a secret on purpose.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

import structlog

from daemon.config import Secret, mask_url

REDACTED: Final = "***"
# Keys whose values are secrets. Matched on whole words of snake_case keys, so "private_key",
# "api_key" and "password" match while "token", "tokens" and "key_count" do not.
_SECRET_KEY_RE: Final = re.compile(
    r"(^|_)(private_key|privkey|secret|password|passwd|passphrase|mnemonic|seed_phrase|"
    r"api_key|apikey|authorization|auth_header|signer_key|raw_key)($|_)|^key$",
    re.IGNORECASE,
)
_URL_RE: Final = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s]*@", re.IGNORECASE)


def _redact_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str) and _URL_RE.search(value):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY_RE.search(key))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys, URL passwords and Secret objects."""
    for key in list(event_dict):
        event_dict[key] = REDACTED if _is_secret_key(key) else _redact_value(event_dict[key])
    return event_dict


def shared_processors() -> list[structlog.typing.Processor]:
    """Processors common to every renderer (and to tests that want production behaviour)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.dict_tracebacks,
        redact_secrets,
    ]


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. Called once by the entry point (and again on reload).

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a terminal).
    """
    out = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        processors = [
            p for p in shared_processors() if p is not structlog.processors.dict_tracebacks
        ]
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
        processors = shared_processors()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: a SIGHUP reload may change the level, and loggers bound before it must
        # follow. The cost is one dict lookup per call.
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger with bound context, e.g. ``get_logger(actor="portfolio", portfolio="p1")``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger
