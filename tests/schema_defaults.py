"""Settings for tests, derived from the configuration schema as the daemon derives them.

Actor settings (``EngineParams``, ``FeedSettings``, ``ExecutorSettings``, ``RestartPolicy``…)
declare no defaults of their own: the schema (:class:`daemon.config.Config`) is the one source.
``config(rebalance={"drift_threshold": Decimal("0.1")})`` is the schema's defaults with some
keys changed, under their configuration names; the other helpers build one settings object the
same way, with some of its fields changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from daemon.config import Config
from daemon.drift import EngineParams
from daemon.live_config import ConfigHolder
from daemon.prices import FeedSettings
from daemon.supervise import RestartPolicy


def config(**sections: Mapping[str, Any]) -> Config:
    """The schema's defaults, with these keys of these sections changed."""
    base = Config()
    changed = {
        name: attrs.evolve(getattr(base, name), **dict(values)) for name, values in sections.items()
    }
    return attrs.evolve(base, **changed)


def holder(**sections: Mapping[str, Any]) -> ConfigHolder:
    """A running configuration (what actors read) of :func:`config`."""
    return ConfigHolder(base=config(**sections))


def engine_params(**changes: Any) -> EngineParams:
    return attrs.evolve(EngineParams.from_config(Config()), **changes)


def feed_settings(**changes: Any) -> FeedSettings:
    return attrs.evolve(FeedSettings.from_config(Config()), **changes)


def restart_policy(**changes: Any) -> RestartPolicy:
    return attrs.evolve(RestartPolicy.from_config(Config()), **changes)
