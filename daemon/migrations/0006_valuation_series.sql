-- driftd schema, version 6: the valuation series `driftd report` reads (issue 16).
--
-- portfolio_snapshot already holds a portfolio's valuations (holdings with amounts, USD values,
-- weights and drifts); the daemon now stores one every report.valuation_interval seconds and
-- one before and one after every rebalance, and says which: the report marks rebalances on its
-- charts and measures what a trade changed from the pairs. Rows written before this migration
-- were all taken on the interval. Holdings written from now on also carry each token's USD
-- price and target weight (inside the jsonb; older rows have neither: the report derives the
-- price from value and amount, and the targets from the portfolio's allocation).

ALTER TABLE portfolio_snapshot
    ADD COLUMN kind text NOT NULL DEFAULT 'interval'
        CONSTRAINT portfolio_snapshot_kind_check
        CHECK (kind IN ('interval', 'before_rebalance', 'after_rebalance'));
