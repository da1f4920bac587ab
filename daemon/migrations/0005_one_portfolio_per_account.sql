-- driftd schema, version 5: one active portfolio per smart account and chain (issue 12).
--
-- Two active portfolios on one account are two actors trading the same balances towards
-- different targets: each undoes the other's trade (31 swaps in 30 s with no market move at
-- cooldown 0, two per cooldown window at the default), paying gas and slippage every time.
-- `driftd portfolio add` refuses the second one; this index makes the rule the database's, so
-- no other path (a script, psql, a reactivation) can create it. Portfolios are never deleted
-- (rebalance_log references them); a portfolio stops counting when it is deactivated
-- (is_active = false), so the index covers active rows only. Addresses are compared in any
-- letter case.
--
-- Rows that already break the rule: the oldest active portfolio of the account (lowest id: the
-- first registered) keeps running and the later ones are deactivated, each with a WARNING in
-- the server log naming it and the one kept. Why not fail the migration instead: the daemon
-- applies migrations at start, so a failing one would stop *every* portfolio (and restart-loop
-- under systemd) until someone edits the database by hand, while the duplicates themselves are
-- already costing money on every tick. Keeping the first is what the daemon itself does with
-- such rows (daemon/registration.py one_actor_per_account), so upgrading changes nothing about
-- which actor trades; the deactivated rows keep their targets and delegations, and
-- `driftd portfolio list` shows them inactive.

DO $$
DECLARE
    later record;
BEGIN
    FOR later IN
        SELECT p.id, p.name, p.smart_account, p.chain_id, kept.name AS kept_name
          FROM portfolio p
          JOIN LATERAL (
              SELECT k.name FROM portfolio k
               WHERE k.is_active AND k.chain_id = p.chain_id
                 AND lower(k.smart_account) = lower(p.smart_account)
               ORDER BY k.id LIMIT 1
          ) kept ON kept.name <> p.name
         WHERE p.is_active
         ORDER BY p.id
    LOOP
        RAISE WARNING 'driftd migration 0005: deactivating portfolio % (id %): smart account % on chain % already runs portfolio %',
            later.name, later.id, later.smart_account, later.chain_id, later.kept_name;
        UPDATE portfolio SET is_active = false WHERE id = later.id;
    END LOOP;
END $$;

CREATE UNIQUE INDEX portfolio_one_active_per_account
    ON portfolio (chain_id, lower(smart_account)) WHERE is_active;
