-- driftd schema, version 3: the executor's transaction lifecycle (DESIGN.md §4.2, §4.7, §4.9,
-- §4.10).
--
-- * An attempt belongs to one chain and one signer: recovery and every query that decides a
--   trade only ever touch the rows of this process's (chain id, signer).
-- * At most one attempt in flight per portfolio, enforced here rather than by an actor's memory:
--   a second PENDING row for the same portfolio is refused by a unique index.
-- * An attempt knows how many transactions (and how many of them swap) it planned, so its
--   terminal status can be decided from the intents alone, after a crash too: SUCCESS only if
--   every planned transaction was mined successfully; PARTIAL if some swap was and not all.
-- * An intent stores what it was signed from (to, data, value, gas limit, deadline, purpose), so
--   recovery can re-sign it with higher fees or replace it with a 0-value cancel.
-- * A pause survives restarts: it is a column of the portfolio, not actor memory.

ALTER TABLE rebalance_log
    ADD COLUMN chain_id         bigint CONSTRAINT rebalance_log_chain_id_positive CHECK (chain_id > 0),
    ADD COLUMN signer           text   CONSTRAINT rebalance_log_signer_lower CHECK (signer ~ '^0x[0-9a-f]{40}$'),
    ADD COLUMN planned_txs      integer CONSTRAINT rebalance_log_planned_txs_check CHECK (planned_txs >= 0),
    ADD COLUMN planned_swap_txs integer CONSTRAINT rebalance_log_planned_swap_txs_check CHECK (planned_swap_txs >= 0),
    ADD COLUMN balances_block   bigint CONSTRAINT rebalance_log_balances_block_check CHECK (balances_block >= 0);

ALTER TABLE rebalance_log DROP CONSTRAINT rebalance_log_status_check;
ALTER TABLE rebalance_log ADD CONSTRAINT rebalance_log_status_check
    CHECK (status IN ('PENDING', 'SUCCESS', 'PARTIAL', 'FAILED', 'DRY_RUN', 'SKIPPED'));
ALTER TABLE rebalance_log ADD CONSTRAINT rebalance_log_partial_has_tx
    CHECK (status <> 'PARTIAL' OR (transaction_hash IS NOT NULL AND error IS NOT NULL));

DROP INDEX rebalance_log_pending_idx;
CREATE UNIQUE INDEX rebalance_log_one_pending_per_portfolio ON rebalance_log (portfolio_id)
    WHERE status = 'PENDING';
CREATE INDEX rebalance_log_pending_scope_idx ON rebalance_log (chain_id, signer)
    WHERE status = 'PENDING';
CREATE INDEX rebalance_log_traded_idx ON rebalance_log (portfolio_id, finished_at DESC)
    WHERE status IN ('SUCCESS', 'PARTIAL');

ALTER TABLE tx_intent
    ADD COLUMN purpose    text NOT NULL DEFAULT 'swap'
                          CONSTRAINT tx_intent_purpose_check CHECK (purpose IN ('approve', 'swap', 'cancel')),
    ADD COLUMN call_index integer CONSTRAINT tx_intent_call_index_check CHECK (call_index >= 0),
    ADD COLUMN tx_to      text CONSTRAINT tx_intent_to_format CHECK (tx_to ~ '^0x[0-9a-fA-F]{40}$'),
    ADD COLUMN tx_data    bytea,
    ADD COLUMN tx_value   numeric(78, 0) CONSTRAINT tx_intent_value_check CHECK (tx_value >= 0),
    ADD COLUMN gas_limit  numeric(78, 0) CONSTRAINT tx_intent_gas_limit_check CHECK (gas_limit > 0),
    ADD COLUMN deadline   bigint;
CREATE INDEX tx_intent_scope_nonce_idx ON tx_intent (chain_id, lower(signer), nonce);

ALTER TABLE portfolio ADD COLUMN is_paused boolean NOT NULL DEFAULT false;
