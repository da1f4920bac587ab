"""Every configuration key as declared, and its environment variable: what loading, the
example file, the README reference and reloads walk over."""

from __future__ import annotations

from typing import Any, Final

import attrs

from daemon.config.declare import is_live
from daemon.config.tree import section_types

ENV_PREFIX: Final = "DRIFTD_"


def env_name(section: str, name: str) -> str:
    """The environment variable every key can be set with: ``DRIFTD_SECTION_KEY``."""
    return f"{ENV_PREFIX}{section.upper()}_{name.upper()}"


@attrs.frozen
class KeySpec:
    """One configuration key as declared: used by loading, the example file and the docs."""

    section: str
    name: str
    default: Any
    doc: str
    env: tuple[str, ...]
    live: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_name(self) -> str:
        return env_name(self.section, self.name)


def key_specs() -> list[KeySpec]:
    """Every configuration key, in declaration order."""
    return [
        KeySpec(
            section=section,
            name=f.name,
            default=f.default,
            doc=f.metadata["doc"],
            env=f.metadata["env"],
            live=is_live(f),
        )
        for section, cls in section_types().items()
        for f in attrs.fields(cls)
    ]
