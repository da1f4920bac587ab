"""How values cross between PostgreSQL and Python: the JSON codec and small conversions.

JSON: ``jsonb`` values are decoded with ``Decimal`` for non-integers and encoded with
``Decimal`` written as an exact JSON number, so money never passes through float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg


def _json_encode(value: Any) -> str:
    """JSON with ``Decimal`` written as an exact number (json.dumps would go through float)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"cannot store non-finite number {value} in JSON")
        return str(value)
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}:{_json_encode(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json_encode(v) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError("floats are not stored; use Decimal")
    return json.dumps(value)


def _json_decode(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog"
    )
    await conn.set_type_codec(
        "json", encoder=_json_encode, decoder=_json_decode, schema="pg_catalog"
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
