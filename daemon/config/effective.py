"""The effective configuration as plain data for printing (``driftd config show``), with every
secret and every URL's credentials masked."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import attrs

from daemon.config.masking import MASK, mask_url
from daemon.config.tree import Config, section_types

_NOT_SET: Final = "(not set)"


def effective_config(config: Config) -> dict[str, dict[str, Any]]:
    """The configuration as plain data for printing, with secrets and passwords masked."""
    out: dict[str, dict[str, Any]] = {}
    for section_name in section_types():
        section = getattr(config, section_name)
        out[section_name] = {
            f.name: _display(getattr(section, f.name)) for f in attrs.fields(type(section))
        }
    # Every URL is shown with its credentials masked (passwords, key-like path segments, query
    # values); a webhook URL is a secret as a whole, so only its host is shown.
    for values in out.values():
        for name, value in values.items():
            if isinstance(value, str) and "://" in value:
                values[name] = mask_url(value)
    out["alerts"]["webhook_url"] = mask_url(config.alerts.webhook_url, hide_path=True)
    out["secrets"] = {
        "signer_key": MASK if config.secrets.signer_key else _NOT_SET,
        "coingecko_api_key": MASK if config.secrets.coingecko_api_key else _NOT_SET,
    }
    return out


def _display(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    return value
