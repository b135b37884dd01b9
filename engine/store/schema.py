"""The SQLite schema. Idempotent: run at every open."""

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
    ack_code        TEXT NOT NULL DEFAULT '',
    findings        TEXT,
    raw             BLOB NOT NULL,
    transformed     BLOB,
    response        BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (channel, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_status ON messages (channel, status, id);

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
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries (message_id);
"""
