-- Passerelle PostgreSQL store, version 1: the SQLite schema (engine/store/schema.py) with
-- the same tables, columns and trigger semantics, plus what several worker processes need.
--
-- Partitioning: `messages`, `contents`, `events` and `deliveries` are range-partitioned by the
-- message's `received_at` (epoch seconds), one partition per calendar month (UTC), created ahead
-- by `passerelle_ensure_month`. Retention drops a month's four partitions together
-- (engine/store/postgres.py, `apply_retention`). A partitioned table cannot hold a unique index
-- without the partition key, so de-duplication keys live in the plain table `dedup_keys`.
--
-- Claims: `claimed_by` names the worker that owns a delivery or a `received` message; a worker
-- owns it while its row in `workers` has a lease in the future (renewed by a heartbeat).

-- Lease time: the server's clock (workers on several machines agree on it), one value per
-- statement, so a claim scan judges every lease at the same instant (a lease expiring while
-- the scan runs must not make an older delivery look owned and a newer one look free).
CREATE FUNCTION passerelle_now() RETURNS double precision
    LANGUAGE sql STABLE AS $$ SELECT extract(epoch FROM statement_timestamp())::double precision $$;

CREATE TABLE workers (
    id          text PRIMARY KEY,
    started_at  double precision NOT NULL,
    lease_until double precision NOT NULL
);

CREATE SEQUENCE message_ids;
CREATE SEQUENCE delivery_ids;
CREATE SEQUENCE event_ids;

CREATE TABLE messages (
    id              bigint NOT NULL,
    channel         text NOT NULL,
    channel_version text NOT NULL DEFAULT '',
    received_at     double precision NOT NULL,
    updated_at      double precision NOT NULL,
    content_type    text NOT NULL,
    source_type     text NOT NULL DEFAULT '',
    peer            text NOT NULL DEFAULT '',
    tls_subject     text NOT NULL DEFAULT '',
    filename        text NOT NULL DEFAULT '',
    control_id      text NOT NULL DEFAULT '',
    sender          text NOT NULL DEFAULT '',
    dedup_key       text,
    content_hash    bytea,
    status          text NOT NULL,
    intake_status   text NOT NULL DEFAULT '',
    ack_code        text NOT NULL DEFAULT '',
    findings        text,
    claimed_by      text,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX messages_id ON messages (id);
CREATE INDEX messages_received ON messages (channel, id) WHERE status = 'received';
CREATE INDEX messages_status ON messages (channel, status);

CREATE TABLE dedup_keys (
    channel     text NOT NULL,
    dedup_key   text NOT NULL,
    message_id  bigint NOT NULL,
    received_at double precision NOT NULL,
    PRIMARY KEY (channel, dedup_key)
);
CREATE INDEX dedup_keys_received ON dedup_keys (received_at);

CREATE TABLE contents (
    message_id  bigint NOT NULL,
    received_at double precision NOT NULL,
    raw         bytea NOT NULL,
    transformed bytea,
    response    bytea,
    PRIMARY KEY (message_id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX contents_message ON contents (message_id);

CREATE TABLE events (
    id          bigint NOT NULL DEFAULT nextval('event_ids'),
    message_id  bigint NOT NULL,
    received_at double precision NOT NULL,
    at          double precision NOT NULL,
    status      text NOT NULL,
    destination text,
    detail      text
) PARTITION BY RANGE (received_at);
CREATE INDEX events_message ON events (message_id, id);

CREATE TABLE deliveries (
    id              bigint NOT NULL DEFAULT nextval('delivery_ids'),
    message_id      bigint NOT NULL,
    received_at     double precision NOT NULL,
    channel         text NOT NULL,
    destination     text NOT NULL,
    status          text NOT NULL,
    order_key       text NOT NULL DEFAULT '',
    attempts        integer NOT NULL DEFAULT 0,
    created_at      double precision NOT NULL,
    next_attempt_at double precision NOT NULL,
    updated_at      double precision NOT NULL,
    last_error      text,
    response        bytea,
    claimed_by      text,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX deliveries_id ON deliveries (id);
CREATE INDEX deliveries_open ON deliveries (channel, destination, id) WHERE status IN ('queued', 'retrying');
CREATE INDEX deliveries_open_key ON deliveries (channel, destination, order_key, id)
    WHERE status IN ('queued', 'retrying') AND order_key <> '';
CREATE INDEX deliveries_message ON deliveries (message_id, status);
CREATE INDEX deliveries_unowned_key ON deliveries (channel, destination, order_key)
    WHERE status IN ('queued', 'retrying') AND claimed_by IS NULL;

CREATE TABLE channel_versions (
    channel   text NOT NULL,
    version   text NOT NULL,
    loaded_at double precision NOT NULL,
    content   text NOT NULL,
    seq       bigserial,
    PRIMARY KEY (channel, version)
);

-- The month partitions holding `at` (epoch seconds), created when missing. Concurrent workers
-- may call it for the same month: the advisory lock makes the second one find the tables.
CREATE FUNCTION passerelle_ensure_month(at double precision) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first timestamptz := date_trunc('month', to_timestamp(at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    suffix text := to_char(first AT TIME ZONE 'UTC', '"y"YYYY"m"MM');
    low double precision := extract(epoch FROM first);
    high double precision := extract(epoch FROM first + interval '1 month');
    parent text;
BEGIN
    IF to_regclass('messages_' || suffix) IS NOT NULL THEN
        RETURN suffix;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('passerelle_partitions'));
    FOREACH parent IN ARRAY ARRAY['messages', 'contents', 'events', 'deliveries'] LOOP
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)',
                       parent || '_' || suffix, parent, low, high);
    END LOOP;
    RETURN suffix;
END $$;

-- A message's status change is an event (SQLite trigger `message_status_event`).
CREATE FUNCTION passerelle_message_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> OLD.status THEN
        INSERT INTO events (message_id, received_at, at, status)
        VALUES (NEW.id, NEW.received_at, NEW.updated_at, NEW.status);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER message_status_event AFTER UPDATE OF status ON messages
    FOR EACH ROW EXECUTE FUNCTION passerelle_message_event();

-- Each delivery attempt outcome is an event; when the last open delivery of a queued message
-- closes, the message gets its final status (SQLite trigger `delivery_outcome`). Unlike SQLite,
-- two workers may close two deliveries of one message at once: the message row is locked first,
-- so the second waits for the first and its check (a new statement: a new snapshot) sees it.
CREATE FUNCTION passerelle_delivery_outcome() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (message_id, received_at, at, status, destination, detail)
    VALUES (NEW.message_id, NEW.received_at, NEW.updated_at, NEW.status, NEW.destination, NEW.last_error);
    IF NEW.status IN ('queued', 'retrying') THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM messages WHERE id = NEW.message_id AND received_at = NEW.received_at FOR UPDATE;
    UPDATE messages
    SET status = CASE WHEN EXISTS (SELECT 1 FROM deliveries
                                   WHERE message_id = NEW.message_id AND received_at = NEW.received_at
                                     AND status <> 'sent')
                      THEN 'errored' ELSE 'sent' END,
        updated_at = NEW.updated_at
    WHERE id = NEW.message_id AND received_at = NEW.received_at AND status = 'queued'
      AND NOT EXISTS (SELECT 1 FROM deliveries
                      WHERE message_id = NEW.message_id AND received_at = NEW.received_at
                        AND status IN ('queued', 'retrying'));
    RETURN NULL;
END $$;
CREATE TRIGGER delivery_outcome AFTER UPDATE OF status, attempts ON deliveries
    FOR EACH ROW EXECUTE FUNCTION passerelle_delivery_outcome();

-- New deliveries of a message; returns their ids, 0 for one this worker does not own. A delivery
-- is created owned by `worker` (the in-memory fast path) unless an older open delivery of the
-- same order key is not the worker's: then it is created unclaimed and waits for a claim scan,
-- so one key's deliveries are owned by one worker at a time. The advisory lock serialises
-- workers inserting for the same key (held to the end of the group commit).
CREATE FUNCTION passerelle_insert_deliveries(
    p_message bigint, p_received_at double precision, p_channel text, p_now double precision,
    p_destinations text[], p_order_keys text[], p_worker text
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[] := '{}';
    owner text;
    new_id bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_destinations, 1), 0) LOOP
        owner := p_worker;
        IF p_order_keys[i] <> '' THEN
            PERFORM pg_advisory_xact_lock(hashtext(p_channel || E'\x1f' || p_destinations[i]),
                                          hashtext(p_order_keys[i]));
            -- Two index probes, not a scan of the key's backlog: the oldest open delivery of
            -- the key is someone else's, or one is unowned. (A newer one cannot belong to another
            -- worker while the oldest is ours: claims skip keys a live worker holds.)
            IF EXISTS (SELECT 1 FROM (SELECT o.claimed_by FROM deliveries o
                                      WHERE o.channel = p_channel AND o.destination = p_destinations[i]
                                        AND o.order_key = p_order_keys[i] AND o.status IN ('queued', 'retrying')
                                      ORDER BY o.id LIMIT 1) oldest
                       WHERE oldest.claimed_by IS DISTINCT FROM p_worker)
               OR EXISTS (SELECT 1 FROM deliveries o
                          WHERE o.channel = p_channel AND o.destination = p_destinations[i]
                            AND o.order_key = p_order_keys[i] AND o.status IN ('queued', 'retrying')
                            AND o.claimed_by IS NULL) THEN
                owner := NULL;
            END IF;
        END IF;
        INSERT INTO deliveries (message_id, received_at, channel, destination, status, order_key, attempts,
                                created_at, next_attempt_at, updated_at, claimed_by)
        VALUES (p_message, p_received_at, p_channel, p_destinations[i], 'queued', p_order_keys[i], 0,
                p_now, p_now, p_now, owner)
        RETURNING id INTO new_id;
        ids := ids || CASE WHEN owner IS NULL THEN 0 ELSE new_id END;
    END LOOP;
    RETURN ids;
END $$;

-- The intake hot path in one round trip (SQLite: `intake_op`): the de-duplication key, the
-- message row, its content row, its deliveries. `existing` is true when the key was already
-- used: then nothing is stored and the first message's verdict is returned. A concurrent
-- intake of the same key waits on the key's unique index until the first one commits.
CREATE FUNCTION passerelle_intake(
    p_channel text, p_version text, p_received_at double precision, p_content_type text,
    p_source_type text, p_peer text, p_tls_subject text, p_filename text, p_control_id text,
    p_sender text, p_dedup_key text, p_hash bytea, p_status text, p_ack_code text, p_findings text,
    p_raw bytea, p_transformed bytea, p_response bytea, p_destinations text[], p_order_keys text[],
    p_worker text,
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
    VALUES (message_id, p_channel, p_version, p_received_at, p_received_at, p_content_type, p_source_type,
            p_peer, p_tls_subject, p_filename, p_control_id, p_sender, p_dedup_key, p_hash, p_status,
            p_status, p_ack_code, p_findings, CASE WHEN p_status = 'received' THEN p_worker END);
    INSERT INTO contents (message_id, received_at, raw, transformed, response)
    VALUES (message_id, p_received_at, p_raw, p_transformed, p_response);
    delivery_ids := passerelle_insert_deliveries(message_id, p_received_at, p_channel, p_received_at,
                                                 p_destinations, p_order_keys, p_worker);
END $$;

-- Steps ran on a `received` message (SQLite: `processed_op`). Nothing is changed when another
-- worker already processed it (its claim had expired): the first outcome stands.
CREATE FUNCTION passerelle_processed(
    p_message bigint, p_channel text, p_status text, p_findings text, p_transformed bytea,
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
    IF p_transformed IS NOT NULL THEN
        UPDATE contents SET transformed = p_transformed WHERE message_id = p_message AND received_at = received;
    END IF;
    RETURN passerelle_insert_deliveries(p_message, received, p_channel, p_now, p_destinations, p_order_keys,
                                        p_worker);
END $$;

-- Operator resend (SQLite: `requeue_delivery_op`): the message back to `queued`, then the delivery,
-- owned by the worker that asked (it resumes it in its running queue).
CREATE FUNCTION passerelle_requeue(p_delivery bigint, p_now double precision, p_note text, p_worker text)
RETURNS SETOF deliveries
LANGUAGE plpgsql AS $$
DECLARE
    d deliveries;
BEGIN
    SELECT * INTO d FROM deliveries WHERE id = p_delivery AND status IN ('dead', 'rejected') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE messages SET status = 'queued', updated_at = p_now WHERE id = d.message_id AND received_at = d.received_at;
    RETURN QUERY
        UPDATE deliveries SET status = 'queued', next_attempt_at = p_now, updated_at = p_now, last_error = p_note,
                              claimed_by = p_worker
        WHERE id = p_delivery AND received_at = d.received_at
        RETURNING *;
END $$;
