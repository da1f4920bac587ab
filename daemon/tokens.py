"""The registered tokens, as the running daemon knows them.

One cache of the ``token`` table of this chain, refreshed at every portfolio reconcile and every
price tick: the price feed prices these tokens, the executor finds each leg's addresses and
decimals here, and price and valuation history is stored against their ids. While the database
is unreachable the last list read stays in use (logged once per outage).
"""

from __future__ import annotations

import attrs

from daemon import db as dbm
from daemon.live_config import ConfigSource
from daemon.messages import Token
from daemon.retry import OutageLog


def message_token(token: dbm.TokenRecord) -> Token:
    """A registered token as actors pass it around."""
    return Token(
        symbol=token.symbol,
        address=token.address,
        decimals=token.decimals,
        coingecko_id=token.coingecko_id,
        is_quote=token.is_quote,
    )


@attrs.define(eq=False)
class TokenBook:
    """The tokens of this chain by symbol. Read :attr:`registered` for the database rows."""

    db: dbm.Database
    config: ConfigSource
    outages: OutageLog
    registered: dict[str, dbm.TokenRecord] = attrs.Factory(dict)
    """Symbol → the token as registered (the last list read)."""
    onchain_decimals: dict[str, int] = attrs.Factory(dict)
    """Token address → its ``decimals()`` on chain, read once (registration.portfolios_to_hold)."""

    async def refresh(self) -> None:
        """Read the registered tokens again (raises :class:`~daemon.db.DatabaseError`)."""
        chain_id = self.config.current.chain.chain_id
        self.registered = {token.symbol: token for token in await self.db.tokens(chain_id)}

    async def load(self) -> list[Token]:
        """The registered tokens; while the database is unreachable, the last ones read."""
        try:
            await self.refresh()
        except dbm.DatabaseError as exc:
            self.outages.failed("tokens_not_refreshed", exc)
        else:
            self.outages.ok("tokens_not_refreshed")
        return list(self.by_symbol().values())

    def by_symbol(self) -> dict[str, Token]:
        """The registered tokens by symbol, as actors pass them around."""
        return {symbol: message_token(token) for symbol, token in self.registered.items()}

    def quote(self) -> dbm.TokenRecord | None:
        """The quote token (router prices are quoted in it), if one is registered."""
        return next((t for t in self.registered.values() if t.is_quote), None)
