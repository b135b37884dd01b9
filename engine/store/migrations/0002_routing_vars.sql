-- Passerelle PostgreSQL store, version 2: the routing variables (`contents.vars`, as in SQLite)
-- and the dashboard's audit log.
--
-- The steps' routing variables are kept with the payloads (encrypted with them when a store key is
-- configured), so a message reloaded after a restart routes, and is delivered, with the variables
-- its steps set. `passerelle_intake` and `passerelle_processed` take them; `passerelle_intake` now
-- takes its values in the shared row order of engine/store/rows.py (MESSAGE_COLUMNS, then
-- CONTENT_COLUMNS), the order SQLite inserts them in.
--
-- Written to be re-runnable (IF NOT EXISTS, DROP ... IF EXISTS, CREATE OR REPLACE): applied by the
-- migration runner once (engine/store/pg_schema.py), and harmless if a database already has it.

ALTER TABLE contents ADD COLUMN IF NOT EXISTS vars bytea;

DROP FUNCTION IF EXISTS passerelle_intake(
    text, text, double precision, text, text, text, text, text, text, text, text, bytea, text, text, text,
    bytea, bytea, bytea, text[], text[], text);

-- The intake hot path in one round trip (SQLite: `intake_op`): the de-duplication key, the
-- message row, its content row, its deliveries. `existing` is true when the key was already
-- used: then nothing is stored and the first message's verdict is returned. A concurrent
-- intake of the same key waits on the key's unique index until the first one commits.
CREATE OR REPLACE FUNCTION passerelle_intake(
    p_channel text, p_version text, p_received_at double precision, p_updated_at double precision,
    p_content_type text, p_source_type text, p_peer text, p_tls_subject text, p_filename text,
    p_control_id text, p_sender text, p_dedup_key text, p_hash bytea, p_status text, p_intake_status text,
    p_ack_code text, p_findings text,
    p_raw bytea, p_transformed bytea, p_response bytea, p_vars bytea,
    p_destinations text[], p_order_keys text[], p_worker text,
    OUT message_id bigint, OUT existing boolean, OUT old_hash bytea, OUT old_status text,
    OUT old_ack text, OUT old_findings text, OUT delivery_ids bigint[]
)
LANGUAGE plpgsql AS $$
BEGIN
    message_id := nextval('message_ids');
    existing := false;
    IF p_dedup_key IS NOT NULL THEN
        INSERT INTO dedup_keys (channel, dedup_key, message_id, received_at)
        VALUES (p_channel, p_dedup_key, message_id, p_received_at) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            existing := true;
            SELECT m.id, m.content_hash, m.status, m.ack_code, m.findings
            INTO message_id, old_hash, old_status, old_ack, old_findings
            FROM dedup_keys k JOIN messages m ON m.id = k.message_id AND m.received_at = k.received_at
            WHERE k.channel = p_channel AND k.dedup_key = p_dedup_key;
            RETURN;
        END IF;
    END IF;
    INSERT INTO messages (id, channel, channel_version, received_at, updated_at, content_type, source_type,
                          peer, tls_subject, filename, control_id, sender, dedup_key, content_hash, status,
                          intake_status, ack_code, findings, claimed_by)
    VALUES (message_id, p_channel, p_version, p_received_at, p_updated_at, p_content_type, p_source_type,
            p_peer, p_tls_subject, p_filename, p_control_id, p_sender, p_dedup_key, p_hash, p_status,
            p_intake_status, p_ack_code, p_findings, CASE WHEN p_status = 'received' THEN p_worker END);
    INSERT INTO contents (message_id, received_at, raw, transformed, response, vars)
    VALUES (message_id, p_received_at, p_raw, p_transformed, p_response, p_vars);
    delivery_ids := passerelle_insert_deliveries(message_id, p_received_at, p_channel, p_received_at,
                                                 p_destinations, p_order_keys, p_worker);
END $$;

DROP FUNCTION IF EXISTS passerelle_processed(
    bigint, text, text, text, bytea, double precision, text[], text[], text);

-- Steps ran on a `received` message (SQLite: `processed_op`). Nothing is changed when another
-- worker already processed it (its claim had expired): the first outcome stands. A payload the
-- steps did not produce (NULL) keeps the stored one.
CREATE OR REPLACE FUNCTION passerelle_processed(
    p_message bigint, p_channel text, p_status text, p_findings text, p_transformed bytea, p_vars bytea,
    p_now double precision, p_destinations text[], p_order_keys text[], p_worker text
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    received double precision;
BEGIN
    UPDATE messages SET status = p_status, findings = coalesce(p_findings, findings), updated_at = p_now
    WHERE id = p_message AND status = 'received'
    RETURNING received_at INTO received;
    IF NOT FOUND THEN
        RETURN '{}';
    END IF;
    IF p_transformed IS NOT NULL OR p_vars IS NOT NULL THEN
        UPDATE contents SET transformed = coalesce(p_transformed, transformed), vars = coalesce(p_vars, vars)
        WHERE message_id = p_message AND received_at = received;
    END IF;
    RETURN passerelle_insert_deliveries(p_message, received, p_channel, p_now, p_destinations, p_order_keys,
                                        p_worker);
END $$;

-- The dashboard's audit log (SQLite keeps it in the store file, engine/dashboard/queries.py):
-- who saw or did what, shared by every worker process (engine/dashboard/pg_queries.py). A
-- detail holding patient data (a search term) is sealed like the payloads when a key is set.
CREATE TABLE IF NOT EXISTS audit_log (
    id      bigserial PRIMARY KEY,
    at      double precision NOT NULL,
    "user"  text NOT NULL,
    role    text NOT NULL DEFAULT '',
    action  text NOT NULL,
    subject text NOT NULL DEFAULT '',
    detail  text NOT NULL DEFAULT '{}',
    client  text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_log_subject ON audit_log (subject, id);
