-- driftd schema, version 8: find a portfolio's attempts without reading them all.
--
-- Every new attempt asks whether a swap of its portfolio was mined after the block its plan's
-- balances were read at (daemon/db/rebalances.py, _refuse_if_traded_since). That starts from the
-- portfolio's attempts, and rebalance_log had no index on portfolio_id for rows that are not
-- PENDING or traded: each check read the whole table. Measured with 200 000 attempts and as many
-- transactions, one packed in three: 2.9 s before this index and the query that uses it, 2 ms
-- after.

CREATE INDEX rebalance_log_portfolio_idx ON rebalance_log (portfolio_id);
