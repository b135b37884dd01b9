"""The SQLite schema. Idempotent: run at every open.

Design for the hot path (measured, see bench/BENCHMARKS.md):
- payloads live in `contents`, apart from `messages`, so that status updates rewrite a narrow
  row instead of the whole message with its raw bytes;
- the history (`events`) and the final status of a message are maintained by triggers, so
  "every status change adds an event" holds whoever writes, and costs no Python round trip.
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY,
    channel         TEXT NOT NULL,
    channel_version TEXT NOT NULL DEFAULT '',
    received_at     REAL NOT NULL,
    updated_at      REAL NOT NULL,
    content_type    TEXT NOT NULL,
    source_type     TEXT NOT NULL DEFAULT '',
    peer            TEXT NOT NULL DEFAULT '',
    tls_subject     TEXT NOT NULL DEFAULT '',
    filename        TEXT NOT NULL DEFAULT '',
    control_id      TEXT NOT NULL DEFAULT '',
    sender          TEXT NOT NULL DEFAULT '',
    dedup_key       TEXT,
    content_hash    BLOB,
    status          TEXT NOT NULL,
    intake_status   TEXT NOT NULL DEFAULT '',
    ack_code        TEXT NOT NULL DEFAULT '',
    findings        TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (channel, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_status ON messages (channel, status, id);

CREATE TABLE IF NOT EXISTS contents (
    message_id  INTEGER PRIMARY KEY REFERENCES messages (id),
    raw         BLOB NOT NULL,
    transformed BLOB,
    response    BLOB,
    vars        BLOB
);

CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL REFERENCES messages (id),
    at          REAL NOT NULL,
    status      TEXT NOT NULL,
    destination TEXT,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events (message_id);

CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES messages (id),
    channel         TEXT NOT NULL,
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    order_key       TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    updated_at      REAL NOT NULL,
    last_error      TEXT,
    response        BLOB
);
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (channel, destination, status, id);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message_id, status);

-- Every channel version the engine ran: `passerelle channels history` and `rollback`.
CREATE TABLE IF NOT EXISTS channel_versions (
    channel   TEXT NOT NULL,
    version   TEXT NOT NULL,
    loaded_at REAL NOT NULL,
    content   TEXT NOT NULL,
    PRIMARY KEY (channel, version)
);

-- A message's status change is an event.
CREATE TRIGGER IF NOT EXISTS message_status_event AFTER UPDATE OF status ON messages
WHEN NEW.status <> OLD.status
BEGIN
    INSERT INTO events (message_id, at, status) VALUES (NEW.id, NEW.updated_at, NEW.status);
END;

-- Each delivery attempt outcome is an event (status or attempt count changed). When the
-- last open delivery of a queued message closes, the message then gets its final status:
-- sent if every delivery was sent, errored otherwise. One trigger, so the order is fixed.
CREATE TRIGGER IF NOT EXISTS delivery_outcome AFTER UPDATE OF status, attempts ON deliveries
BEGIN
    INSERT INTO events (message_id, at, status, destination, detail)
    VALUES (NEW.message_id, NEW.updated_at, NEW.status, NEW.destination, NEW.last_error);
    UPDATE messages
    SET status = CASE WHEN EXISTS (SELECT 1 FROM deliveries
                                   WHERE message_id = NEW.message_id AND status <> 'sent')
                      THEN 'errored' ELSE 'sent' END,
        updated_at = NEW.updated_at
    WHERE id = NEW.message_id AND status = 'queued'
      AND NEW.status NOT IN ('queued', 'retrying')
      AND NOT EXISTS (SELECT 1 FROM deliveries
                      WHERE message_id = NEW.message_id AND status IN ('queued', 'retrying'));
END;
"""
