"""Loading: the TOML file, then the environment, validated into a :class:`Config`.

Precedence, lowest first: the schema's defaults < the TOML file < environment variables (the
seed's names such as ``DRIFT_THRESHOLD``, then ``DRIFTD_SECTION_KEY``). Every problem found is
reported at once, each naming its key: the document's sections, unknown ``DRIFTD_*`` variables,
then section by section its unknown keys and bad values, then the rules across keys, then the
secrets.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import attrs

from daemon.config.declare import parse_value
from daemon.config.errors import ConfigError
from daemon.config.keys import ENV_PREFIX, env_name, key_specs
from daemon.config.secret import (
    COINGECKO_KEY_ENV,
    FORBIDDEN_SECRET_KEYS,
    SIGNER_KEY_ENV,
    Secrets,
    load_secrets,
)
from daemon.config.tree import Config, cross_key_problems, section_types

DEFAULT_CONFIG_PATH: Final = Path("/etc/driftd/config.toml")
ENV_CONFIG_PATH: Final = "DRIFTD_CONFIG"
# DRIFTD_* variables that are not configuration keys (DRIFTD_TEST_FAULTS: daemon.faults).
NON_KEY_ENV: Final = frozenset(
    {ENV_CONFIG_PATH, SIGNER_KEY_ENV, COINGECKO_KEY_ENV, "DRIFTD_TEST_FAULTS"}
)


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path | None:
    """``--config`` wins, then ``$DRIFTD_CONFIG``, then /etc/driftd/config.toml if it exists.

    None means "run from the environment alone".
    """
    if cli_path:
        return Path(cli_path)
    if env.get(ENV_CONFIG_PATH):
        return Path(env[ENV_CONFIG_PATH])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration (file, then environment)."""
    environment = dict(os.environ if env is None else env)
    document: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                # Decimal keeps 0.15 exact: money parameters never pass through float.
                document = tomllib.load(handle, parse_float=Decimal)
        except FileNotFoundError:
            raise ConfigError([f"{path}: config file not found"]) from None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except ValueError as exc:  # an integer of more than 4 300 digits: Python's own limit
            raise ConfigError([f"{path}: not valid TOML: a number is too large ({exc})"]) from None
    return parse_config(document, environment, source=str(path) if path else "")


def parse_config(document: Mapping[str, Any], env: Mapping[str, str], source: str = "") -> Config:
    """Build a validated :class:`Config` from a parsed TOML document and an environment.

    Raises :class:`ConfigError` listing every problem found, each naming its key.
    """
    types = section_types()
    problems = _section_problems(document, types) + _unknown_env_problems(env)
    built: dict[str, Any] = {}
    for section_name, cls in types.items():
        raw_section = document.get(section_name, {})
        if not isinstance(raw_section, Mapping):
            continue  # reported by _section_problems
        section = _build_section(section_name, cls, raw_section, env, problems)
        if section is not None:
            built[section_name] = section
    problems += cross_key_problems(built)
    secrets = Secrets()
    if "signer" in built and "prices" in built:
        secrets, secret_problems = load_secrets(
            built["signer"].key_file, built["prices"].coingecko_api_key_file, env
        )
        problems += secret_problems
    if problems:
        raise ConfigError(problems)
    return Config(**built, secrets=secrets, source=source)


def _section_problems(document: Mapping[str, Any], types: Mapping[str, type[Any]]) -> list[str]:
    """Unknown sections, and sections that are not tables."""
    problems: list[str] = []
    for section_name, section_value in document.items():
        if section_name not in types:
            problems.append(f"{section_name}: unknown section (known: {', '.join(types)})")
        elif not isinstance(section_value, Mapping):
            problems.append(f"{section_name}: must be a table ([{section_name}])")
    return problems


def _unknown_env_problems(env: Mapping[str, str]) -> list[str]:
    """Each DRIFTD_* variable must name a key, so a typo in a unit file is not silently
    ignored."""
    known_env = {spec.env_name for spec in key_specs()}
    return [
        f"{name}: unknown environment variable (no such configuration key)"
        for name in env
        if name.startswith(ENV_PREFIX) and name not in known_env and name not in NON_KEY_ENV
    ]


def _unknown_key_problems(
    section_name: str, raw_section: Mapping[str, Any], fields: Mapping[str, Any]
) -> list[str]:
    """Keys of the file's section that the schema does not declare (secrets among them)."""
    problems: list[str] = []
    for key in raw_section:
        dotted = f"{section_name}.{key}"
        if dotted in FORBIDDEN_SECRET_KEYS:
            problems.append(
                f"{dotted}: secrets are not read from the config file; "
                f"use {FORBIDDEN_SECRET_KEYS[dotted]} or the environment"
            )
        elif key not in fields:
            close = [k for k in fields if k.startswith(key[:4])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{dotted}: unknown key{hint}")
    return problems


def _build_section(
    section_name: str,
    cls: type[Any],
    raw_section: Mapping[str, Any],
    env: Mapping[str, str],
    problems: list[str],
) -> Any | None:
    """One section from the file's table and the environment; its problems go to ``problems``."""
    fields = {f.name: f for f in attrs.fields(cls)}
    problems.extend(_unknown_key_problems(section_name, raw_section, fields))
    values: dict[str, Any] = {}
    for name, attribute in fields.items():
        for origin, raw in _candidates(section_name, attribute, raw_section, env):
            try:
                values[name] = parse_value(attribute, raw)
            except ValueError as exc:
                where = f" (from ${origin})" if origin else ""
                problems.append(f"{section_name}.{name}{where}: {exc}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # pragma: no cover - schema bug, not user input
        problems.append(f"{section_name}: {exc}")
        return None


def _candidates(
    section_name: str,
    attribute: attrs.Attribute[Any],
    raw_section: Mapping[str, Any],
    env: Mapping[str, str],
) -> Iterator[tuple[str, Any]]:
    """The raw values set for one key, lowest precedence first: the file (origin ""), the
    seed's aliases, then ``DRIFTD_SECTION_KEY``; the last valid one wins."""
    if attribute.name in raw_section:
        yield "", raw_section[attribute.name]
    for alias in attribute.metadata["env"]:
        if alias in env:
            yield alias, env[alias]
    spec_env = env_name(section_name, attribute.name)
    if spec_env in env:
        yield spec_env, env[spec_env]
