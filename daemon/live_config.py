"""The running configuration: what every actor reads afresh on every use, and how it changes.

Two things change it while the daemon runs, without a restart: SIGHUP re-reads the file and the
environment (:func:`reload_config`), and ``system_config.REBALANCING_PARAMS`` in the database
overlays the rebalancing parameters (:func:`watch_runtime_params`, which follows it through
LISTEN/NOTIFY). Actors hold a :class:`ConfigSource` and derive their settings from
``current`` each time (``ExecutorSettings.from_config`` and the like), so a reload reaches them
on their next use. A bad reload changes nothing but ``last_reload_error``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import attrs
import trio

from daemon import db as dbm
from daemon.config import (
    Config,
    ConfigError,
    apply_runtime_params,
    changed_keys,
    keep_restart_keys,
)
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.retry import retry_database
from daemon.systemd import Notifier


class ConfigSource(Protocol):
    """Where an actor reads the effective configuration (implemented by :class:`ConfigHolder`)."""

    @property
    def current(self) -> Config:
        """The configuration in force now."""


@attrs.define(eq=False)
class ConfigHolder:
    """The effective configuration and where it came from.

    ``base`` is the file and environment as last loaded (keys that need a restart pinned to
    what the process started with); ``runtime_params`` is the last valid
    ``system_config.REBALANCING_PARAMS``; ``current`` = base overlaid with them, read afresh by
    every actor on every use, so a reload needs no restart. A bad reload changes nothing but
    ``last_reload_error``.
    """

    base: Config
    runtime_params: Any = None
    generation: int = 1
    last_reload_error: str | None = None
    restart_pending: list[str] = attrs.Factory(list)
    """Keys changed on disk that only a restart applies."""
    current: Config = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.current = self.base

    def _effective(self, base: Config, params: Any) -> Config:
        return base if params is None else apply_runtime_params(base, params)

    def reload_base(self, loaded: Config) -> list[str]:
        """Apply a freshly loaded file + environment; returns the live keys that changed.

        Raises :class:`ConfigError` (and changes nothing) if the result is invalid.
        """
        live, restart = changed_keys(self.base, loaded)
        base = keep_restart_keys(self.base, loaded)
        self.current = self._effective(base, self.runtime_params)
        self.base = base
        self.restart_pending = sorted(set(self.restart_pending) | set(restart))
        self.generation += 1
        self.last_reload_error = None
        return live

    def set_runtime_params(self, params: Any) -> None:
        """Apply ``REBALANCING_PARAMS`` from the database (None: none stored)."""
        self.current = self._effective(self.base, params)
        self.runtime_params = params
        self.generation += 1
        self.last_reload_error = None


def reload_config(
    holder: ConfigHolder, load: Callable[[], Config], notifier: Notifier, metrics: Metrics
) -> bool:
    """SIGHUP: re-read file and environment; on any error keep the running config."""
    log = get_logger(actor="app")
    notifier.reloading()
    try:
        applied = holder.reload_base(load())
    except ConfigError as exc:
        holder.last_reload_error = "; ".join(exc.problems)
        log.error("config_reload_failed", problems=exc.problems)
        metrics.config_reloaded(ok=False, generation=holder.generation)
        return False
    finally:
        notifier.ready()
    metrics.config_reloaded(ok=True, generation=holder.generation)
    log.info(
        "config_reloaded",
        generation=holder.generation,
        applied=applied,
        needs_restart=holder.restart_pending,
    )
    return True


@attrs.frozen
class RuntimeParamsWatcher:
    """Keeps ``REBALANCING_PARAMS`` applied (the database has the last word)."""

    holder: ConfigHolder
    db: dbm.Database

    async def load(self) -> None:
        """Apply ``system_config.REBALANCING_PARAMS`` as stored now."""
        log = get_logger(actor="app")
        params = await self.db.get_system_config(dbm.REBALANCING_PARAMS)
        if params == self.holder.runtime_params:
            return
        try:
            self.holder.set_runtime_params(params)
        except ConfigError as exc:
            self.holder.last_reload_error = "; ".join(exc.problems)
            log.error("runtime_params_rejected", problems=exc.problems)
            return
        log.info("runtime_params_applied", params=params, generation=self.holder.generation)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Apply REBALANCING_PARAMS at start and whenever it changes (LISTEN/NOTIFY). The
        listener reconnects by itself after an outage and then says ``resync``: reload."""
        async with self.db.listen(dbm.SYSTEM_CONFIG_CHANNEL) as notifications:
            await self.load()
            task_status.started()
            async for note in notifications:
                if note.resync or note.payload == dbm.REBALANCING_PARAMS:
                    await retry_database(self.load, "runtime_params_reload")
        raise RuntimeError("the system_config notification stream ended")
