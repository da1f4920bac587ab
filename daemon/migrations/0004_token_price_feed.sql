-- driftd schema, version 4: each token's USD price feed (issue 11).
--
-- The oracle guard (DriftGuardEnforcer) values a portfolio's tokens at Chainlink-compatible
-- feeds (AggregatorV3Interface). The token → feed mapping lives with the token, so one concept
-- has one home: `delegation build` writes it into the guard's terms, `delegation verify` and
-- `portfolio add` refuse a delegation whose feed for a token is not the registered one.
-- Nullable: a token without a feed cannot be part of a guarded delegation.

ALTER TABLE token
    ADD COLUMN price_feed text CONSTRAINT token_price_feed_format CHECK (price_feed ~ '^0x[0-9a-fA-F]{40}$');
