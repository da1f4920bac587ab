-- driftd schema, version 1. Applied by daemon/db.py inside one transaction, under an advisory
-- lock, and recorded in schema_migrations. Conventions: snake_case; money and prices are
-- numeric (exact, read as Decimal); on-chain integers (amounts, gas, wei) are numeric(78,0)
-- (uint256 fits); raw transactions are bytea; every status column has a CHECK of its values.

-- ---------------------------------------------------------------------------------------------
-- Tokens the daemon can price and trade.
CREATE TABLE token (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    symbol       text     NOT NULL CONSTRAINT token_symbol_key UNIQUE
                          CONSTRAINT token_symbol_format CHECK (symbol ~ '^[A-Za-z0-9._+-]{1,32}$'),
    address      text     NOT NULL CONSTRAINT token_address_format CHECK (address ~ '^0x[0-9a-fA-F]{40}$'),
    chain_id     bigint   NOT NULL CONSTRAINT token_chain_id_positive CHECK (chain_id > 0),
    decimals     smallint NOT NULL CONSTRAINT token_decimals_range CHECK (decimals BETWEEN 0 AND 77),
    coingecko_id text,
    is_quote     boolean  NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX token_chain_address_key ON token (chain_id, lower(address));
-- One quote (stable) token per chain: router prices are quoted in it.
CREATE UNIQUE INDEX token_one_quote_per_chain ON token (chain_id) WHERE is_quote;

-- ---------------------------------------------------------------------------------------------
-- Portfolios: a smart account, its owner's signed delegations, and target weights.
CREATE TABLE portfolio (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text    NOT NULL CONSTRAINT portfolio_name_key UNIQUE
                          CONSTRAINT portfolio_name_format CHECK (length(name) BETWEEN 1 AND 100),
    smart_account text    NOT NULL CONSTRAINT portfolio_account_format CHECK (smart_account ~ '^0x[0-9a-fA-F]{40}$'),
    chain_id      bigint  NOT NULL CONSTRAINT portfolio_chain_id_positive CHECK (chain_id > 0),
    owner         text             CONSTRAINT portfolio_owner_format CHECK (owner ~ '^0x[0-9a-fA-F]{40}$'),
    is_active     boolean NOT NULL DEFAULT true,
    delegation    jsonb   NOT NULL CONSTRAINT portfolio_delegation_is_array CHECK (jsonb_typeof(delegation) = 'array'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE allocation (
    portfolio_id bigint  NOT NULL REFERENCES portfolio (id) ON DELETE CASCADE,
    token_id     bigint  NOT NULL REFERENCES token (id),
    weight       numeric NOT NULL CONSTRAINT allocation_weight_range CHECK (weight > 0 AND weight <= 1),
    PRIMARY KEY (portfolio_id, token_id)
);
CREATE INDEX allocation_token_idx ON allocation (token_id);

-- The weights of a portfolio sum to 1 (within 1e-9). Checked at commit (deferred), so a
-- transaction may rewrite a portfolio's allocations row by row.
CREATE FUNCTION allocation_check_sum() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pid   bigint := CASE WHEN TG_OP = 'DELETE' THEN OLD.portfolio_id ELSE NEW.portfolio_id END;
    total numeric;
BEGIN
    SELECT sum(weight) INTO total FROM allocation WHERE portfolio_id = pid;
    IF total IS NOT NULL AND abs(total - 1) > 1e-9 THEN
        RAISE EXCEPTION 'allocation weights of portfolio % sum to %, not 1', pid, total
            USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_weights_sum_to_one',
                  TABLE = 'allocation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER allocation_weights_sum_to_one
    AFTER INSERT OR UPDATE OR DELETE ON allocation
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION allocation_check_sum();

-- ---------------------------------------------------------------------------------------------
-- Price observations (append-only).
CREATE TABLE price (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id     bigint  NOT NULL REFERENCES token (id),
    source       text    NOT NULL CONSTRAINT price_source_check CHECK (source IN ('oracle', 'router')),
    usd          numeric NOT NULL CONSTRAINT price_usd_positive CHECK (usd > 0),
    observed_at  timestamptz NOT NULL,
    block_number bigint  CONSTRAINT price_block_number_check CHECK (block_number >= 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX price_latest_idx ON price (token_id, source, observed_at DESC);

-- Valuations of a portfolio (for reports and the drift history).
CREATE TABLE portfolio_snapshot (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    portfolio_id bigint  NOT NULL REFERENCES portfolio (id) ON DELETE CASCADE,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    total_usd    numeric NOT NULL CONSTRAINT portfolio_snapshot_total_check CHECK (total_usd >= 0),
    max_drift    numeric,
    price_source text    CONSTRAINT portfolio_snapshot_source_check CHECK (price_source IN ('oracle', 'router')),
    holdings     jsonb   NOT NULL
);
CREATE INDEX portfolio_snapshot_portfolio_idx ON portfolio_snapshot (portfolio_id, taken_at DESC);

-- ---------------------------------------------------------------------------------------------
-- One row per rebalance attempt. A row is either inserted with a terminal status, or inserted
-- PENDING and later finished exactly once (a trigger forbids changing a terminal row).
CREATE TABLE rebalance_log (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    portfolio_id      bigint NOT NULL REFERENCES portfolio (id),
    "timestamp"       timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    status            text   NOT NULL CONSTRAINT rebalance_log_status_check
                             CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'DRY_RUN', 'SKIPPED')),
    trigger           text   NOT NULL DEFAULT 'drift'
                             CONSTRAINT rebalance_log_trigger_check CHECK (trigger IN ('drift', 'manual', 'recovery')),
    skip_reason       text,
    transaction_hash  text   CONSTRAINT rebalance_log_tx_hash_format CHECK (transaction_hash ~ '^0x[0-9a-fA-F]{64}$'),
    gas_used          numeric(78, 0) CONSTRAINT rebalance_log_gas_used_check CHECK (gas_used >= 0),
    gas_cost_wei      numeric(78, 0) CONSTRAINT rebalance_log_gas_cost_wei_check CHECK (gas_cost_wei >= 0),
    gas_cost_usd      numeric CONSTRAINT rebalance_log_gas_cost_usd_check CHECK (gas_cost_usd >= 0),
    drift_percentage  numeric,
    token_amounts     jsonb,
    swap_path         jsonb,
    expected_outputs  jsonb,
    actual_outputs    jsonb,
    execution_time_ms bigint CONSTRAINT rebalance_log_execution_time_check CHECK (execution_time_ms >= 0),
    error             text,
    CONSTRAINT rebalance_log_finished_iff_terminal CHECK ((status = 'PENDING') = (finished_at IS NULL)),
    CONSTRAINT rebalance_log_skip_has_reason CHECK (status <> 'SKIPPED' OR skip_reason IS NOT NULL),
    CONSTRAINT rebalance_log_failure_has_error CHECK (status <> 'FAILED' OR error IS NOT NULL),
    CONSTRAINT rebalance_log_success_has_tx CHECK (status <> 'SUCCESS' OR transaction_hash IS NOT NULL)
);
CREATE INDEX rebalance_log_success_idx ON rebalance_log (portfolio_id, finished_at DESC)
    WHERE status = 'SUCCESS';
CREATE INDEX rebalance_log_timestamp_idx ON rebalance_log ("timestamp");
CREATE INDEX rebalance_log_pending_idx ON rebalance_log (portfolio_id) WHERE status = 'PENDING';

CREATE FUNCTION rebalance_log_terminal_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'PENDING' THEN
        RAISE EXCEPTION 'rebalance_log % is already % and cannot change', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'rebalance_log_terminal_is_final',
                  TABLE = 'rebalance_log';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER rebalance_log_terminal_is_final BEFORE UPDATE ON rebalance_log
    FOR EACH ROW EXECUTE FUNCTION rebalance_log_terminal_is_final();

-- ---------------------------------------------------------------------------------------------
-- Signed transactions, recorded before their first broadcast (money-safety invariant 2).
-- Live intents (SIGNED, BROADCAST) hold their (chain, signer, nonce) exclusively; a fee bump
-- marks the old intent REPLACED and inserts the new one in the same transaction.
CREATE TABLE tx_intent (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rebalance_id             bigint REFERENCES rebalance_log (id),
    chain_id                 bigint NOT NULL CONSTRAINT tx_intent_chain_id_positive CHECK (chain_id > 0),
    signer                   text   NOT NULL CONSTRAINT tx_intent_signer_format CHECK (signer ~ '^0x[0-9a-fA-F]{40}$'),
    nonce                    bigint NOT NULL CONSTRAINT tx_intent_nonce_check CHECK (nonce >= 0),
    raw_tx                   bytea  NOT NULL,
    tx_hash                  text   NOT NULL CONSTRAINT tx_intent_tx_hash_key UNIQUE
                                    CONSTRAINT tx_intent_tx_hash_format CHECK (tx_hash ~ '^0x[0-9a-fA-F]{64}$'),
    status                   text   NOT NULL CONSTRAINT tx_intent_status_check
                                    CHECK (status IN ('SIGNED', 'BROADCAST', 'CONFIRMED', 'REVERTED', 'REPLACED', 'DROPPED')),
    fencing_token            bigint NOT NULL,
    max_fee_per_gas          numeric(78, 0),
    max_priority_fee_per_gas numeric(78, 0),
    replaces_id              bigint REFERENCES tx_intent (id),
    block_number             bigint,
    gas_used                 numeric(78, 0),
    effective_gas_price      numeric(78, 0),
    error                    text,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tx_intent_live_nonce ON tx_intent (chain_id, lower(signer), nonce)
    WHERE status IN ('SIGNED', 'BROADCAST');
CREATE INDEX tx_intent_status_idx ON tx_intent (status);
CREATE INDEX tx_intent_rebalance_idx ON tx_intent (rebalance_id);

-- ---------------------------------------------------------------------------------------------
-- Runtime parameters (REBALANCING_PARAMS) as JSON.
CREATE TABLE system_config (
    key        text  PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Change announcements. Channel driftd_portfolio: payload = portfolio id (portfolio or its
-- allocations changed). Channel driftd_system_config: payload = the key. NOTIFY is delivered at
-- commit and deduplicated within a transaction.
CREATE FUNCTION notify_portfolio_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pid bigint;
BEGIN
    IF TG_TABLE_NAME = 'portfolio' THEN
        pid := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSE
        pid := CASE WHEN TG_OP = 'DELETE' THEN OLD.portfolio_id ELSE NEW.portfolio_id END;
    END IF;
    PERFORM pg_notify('driftd_portfolio', pid::text);
    RETURN NULL;
END $$;
CREATE TRIGGER portfolio_notify AFTER INSERT OR UPDATE OR DELETE ON portfolio
    FOR EACH ROW EXECUTE FUNCTION notify_portfolio_changed();
CREATE TRIGGER allocation_notify AFTER INSERT OR UPDATE OR DELETE ON allocation
    FOR EACH ROW EXECUTE FUNCTION notify_portfolio_changed();

CREATE FUNCTION notify_system_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('driftd_system_config',
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END);
    RETURN NULL;
END $$;
CREATE TRIGGER system_config_notify AFTER INSERT OR UPDATE OR DELETE ON system_config
    FOR EACH ROW EXECUTE FUNCTION notify_system_config_changed();

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER portfolio_touch BEFORE UPDATE ON portfolio
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tx_intent_touch BEFORE UPDATE ON tx_intent
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER system_config_touch BEFORE UPDATE ON system_config
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
