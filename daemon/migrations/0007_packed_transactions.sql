-- driftd schema, version 7: one transaction may carry the rebalances of several portfolios
-- (issue 15: packing).
--
-- A packed transaction is one `redeemDelegations` call holding the executions of several
-- attempts, each under its own owner's delegations. It is still one nonce and one intent row:
-- `rebalance_id` names the first attempt (so every existing per-attempt query keeps finding it)
-- and `packed_rebalance_ids` lists every attempt it carries, first one included. Each attempt's
-- share of the gas is its number of executions, `packed_weights`, aligned with the ids.
--
-- Every query that asks "which transactions belong to this attempt" or "was a swap of this
-- portfolio mined after block B" must look at both columns: an attempt carried as the second
-- member of a pack has no row with its own id in `rebalance_id`.

ALTER TABLE tx_intent
    ADD COLUMN packed_rebalance_ids bigint[],
    ADD COLUMN packed_weights       integer[];

ALTER TABLE tx_intent ADD CONSTRAINT tx_intent_packed_shape CHECK (
    (packed_rebalance_ids IS NULL AND packed_weights IS NULL)
    OR (
        cardinality(packed_rebalance_ids) >= 2
        AND cardinality(packed_weights) = cardinality(packed_rebalance_ids)
        AND rebalance_id = packed_rebalance_ids[1]
        AND 0 < ALL (packed_weights)
    )
);

CREATE INDEX tx_intent_packed_idx ON tx_intent USING gin (packed_rebalance_ids);
