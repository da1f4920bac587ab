-- driftd schema, version 2: one nonce owner per signer, across processes (DESIGN.md §4.1).
--
-- A process that wants to sign for a signer takes its lease. Each acquisition increments the
-- fencing token, and every tx_intent must carry the token of the current, unexpired lease: a
-- process that lost its lease (stalled past the expiry, or another process took over) can no
-- longer record an intent, and since nothing is broadcast before its intent is recorded, it can
-- no longer send. Two processes can therefore never hand out the same nonce.
CREATE TABLE signer_lease (
    chain_id      bigint      NOT NULL,
    signer        text        NOT NULL CONSTRAINT signer_lease_signer_lower CHECK (signer = lower(signer)),
    holder        text        NOT NULL,
    fencing_token bigint      NOT NULL CONSTRAINT signer_lease_token_positive CHECK (fencing_token > 0),
    acquired_at   timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (chain_id, signer)
);

CREATE FUNCTION tx_intent_check_fencing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM signer_lease
        WHERE chain_id = NEW.chain_id AND signer = lower(NEW.signer)
          AND fencing_token = NEW.fencing_token AND expires_at > now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fencing token % does not hold the lease of signer % (lost or expired)',
                NEW.fencing_token, NEW.signer
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tx_intent_fencing_token';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER tx_intent_fencing BEFORE INSERT ON tx_intent
    FOR EACH ROW EXECUTE FUNCTION tx_intent_check_fencing();
