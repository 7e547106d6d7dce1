-- The event feed (chat.v1.EventService): every event of every conversation in one order.
--
-- The source tables (conversation_events, messages, read_events) record what happened,
-- each row with its writing transaction (xid) and commit-ordered pos. A sequencer
-- (store/events.rs) numbers what became visible since its last snapshot into
-- feed_events, under feed_state's row lock, so positions are gap-free and a position
-- is only ever visible once every smaller one is: "after N" never skips a late commit.

-- A read position moved (MarkRead). SendMessage's move of the sender's own position is
-- implied by the message, so the send path writes nothing here.
CREATE TABLE read_events (
    id              bigserial   PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    role            smallint    NOT NULL CHECK (role IN (1, 2)),
    reader_id       text        NOT NULL,
    seq             bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    pos             bigint      NOT NULL DEFAULT inbox_pos()
);
CREATE INDEX read_events_xid_idx ON read_events (xid);

-- kind: 1 created, 2 customer updated, 3 status changed (conversation_events.id in
-- key), 4 message sent (messages.seq), 5 read position moved (read_events.id).
CREATE TABLE feed_events (
    position        bigint      PRIMARY KEY,
    kind            smallint    NOT NULL CHECK (kind BETWEEN 1 AND 5),
    conversation_id uuid        NOT NULL,
    provider_id     text        NOT NULL,
    key             bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX feed_events_provider_idx ON feed_events (provider_id, position);

-- The sequencer's state, one row: what it has numbered (everything visible in
-- `assigned`), the last position given, and the last position pruned.
CREATE TABLE feed_state (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    assigned       pg_snapshot NOT NULL,
    last_position  bigint      NOT NULL DEFAULT 0,
    pruned_through bigint      NOT NULL DEFAULT 0
);
-- The feed starts with this migration; earlier history is not in it.
INSERT INTO feed_state (assigned) VALUES (pg_current_snapshot());

-- Durable named consumers: the last position each acknowledged (advance-only).
CREATE TABLE feed_consumers (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    acked_at   timestamptz NOT NULL DEFAULT now()
);
