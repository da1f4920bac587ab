"""Logging: structlog to stdout, one JSON object per line (systemd's journal collects it).

Every event carries an ISO-8601 UTC timestamp, the level, the event name and whatever context
was bound (``actor``, ``portfolio``…). On a terminal the same events render for humans.

A redaction processor runs last before rendering: values under secret-looking keys are replaced,
credentials inside URLs are masked (:func:`~daemon.config.mask_url`: passwords, key-like path
segments, query values, webhook tokens) and :class:`~daemon.config.Secret` objects render as
``***``. It is a safety net; code must still never log a secret on purpose. Tracebacks never
render frame locals (a private key object's ``repr`` is the key).

Libraries that log through the standard library (asyncpg, asyncio, httpx, trio…) go through the
same processors (structlog's ``ProcessorFormatter``), so a traceback during a database restart is
one JSON line like every other, with its URLs masked.
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
# Standard-library loggers that log every request with its URL at INFO: warnings and up only.
_CHATTY_LIBRARY_LOGGERS: Final = ("httpx", "httpcore", "hpack", "urllib3")

_EXCEPTION_DICTS: Final = structlog.processors.ExceptionRenderer(
    # Frame locals are never rendered: an eth-keys private key's repr is the key itself, and a
    # local may hold a URL with its API key.
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
"""structlog's ``dict_tracebacks`` without frame locals (its default renders them)."""


def _redact_value(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str) and "://" in value:
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
    """structlog processor: mask secret-looking keys, URL credentials and Secret objects."""
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
        _EXCEPTION_DICTS,
        redact_secrets,
    ]


def _foreign_processors(exceptions: structlog.typing.Processor) -> list[structlog.typing.Processor]:
    """What a standard-library record goes through before the renderer."""
    return [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exceptions,
        redact_secrets,
    ]


class _StructlogHandler(logging.Handler):
    """Writes standard-library records, rendered by structlog, where structlog writes.

    Through structlog's own :class:`~structlog.PrintLogger` (its per-file lock), so a record
    from the database thread never lands inside a line of the Trio thread. With no stream it
    writes to ``sys.stdout`` as it is at the time (tests swap it).
    """

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        out = self._stream or sys.stdout
        if getattr(out, "closed", False):
            return  # its owner closed it (the demo's log file at exit): nowhere to write
        try:
            line = self.format(record)
            structlog.PrintLogger(file=out).msg(line)
        except Exception:  # noqa: BLE001 - logging must not raise; the stdlib's own policy
            self.handleError(record)


def _route_standard_library(
    level: int,
    stream: TextIO | None,
    pre_chain: list[structlog.typing.Processor],
    renderer: structlog.typing.Processor,
) -> None:
    """Send every standard-library logger through structlog (replacing an earlier handler of
    ours, so that a reload does not duplicate lines)."""
    handler = _StructlogHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # warnings.warn() output becomes a log line too, not two lines of text on stderr. (Off
    # first: on again after someone else replaced warnings.showwarning, as pytest does.)
    logging.captureWarnings(False)
    logging.captureWarnings(True)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process. Called once by the entry point (and again on reload).

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when ``stream`` is a terminal). Records
    of standard-library loggers are rendered the same way, to the same stream.
    """
    out = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor
    exceptions: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        # The traceback as plain text before redaction (no locals; URLs in it masked), which
        # the console renderer then prints as it is.
        exceptions = structlog.processors.format_exc_info
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
        exceptions = _EXCEPTION_DICTS
    processors = [exceptions if p is _EXCEPTION_DICTS else p for p in shared_processors()]
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: a SIGHUP reload may change the level, and loggers bound before it must
        # follow. The cost is one dict lookup per call.
        cache_logger_on_first_use=False,
    )
    _route_standard_library(numeric_level, stream, _foreign_processors(exceptions), renderer)


def get_logger(**context: Any) -> structlog.typing.FilteringBoundLogger:
    """A logger with bound context, e.g. ``get_logger(actor="portfolio", portfolio="p1")``."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger
