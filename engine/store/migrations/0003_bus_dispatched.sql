-- The work bus (engine/bus/, `bus: amqp`): a `received` message whose id the broker confirmed.
-- Set after the publisher confirm; the sweep publishes again the `received` messages still
-- without it (their publication failed or was never confirmed). Unused without the bus.
-- A constant default: PostgreSQL adds the column without rewriting the table.
ALTER TABLE messages ADD COLUMN dispatched boolean NOT NULL DEFAULT false;
