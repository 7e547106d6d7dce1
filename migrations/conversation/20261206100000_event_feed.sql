-- The event feed (chat.v1.EventService): every event of every conversation in one order.
--
-- The source tables (conversation_events, messages, read_events, and presence_events and
-- reminder_events below) record what happened, each row with its writing transaction
-- (xid) and commit-ordered pos. A sequencer (store/events.rs) closes a window over what
-- became visible since its last snapshot, under feed_state's row lock: "after a cursor"
-- never skips a late commit.

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

-- The feed is numbered by windows, not by event: window N holds every source row whose
-- transaction is visible in snapshot `upper` and was not in `lower` (window N-1's
-- upper). A sequencer records a window, a few dozen bytes, when something new became
-- visible; the send path writes nothing more and no row is copied. Within a window,
-- events are ordered by (pos, part, conversation, key), so a cursor is a window and a
-- place in it, and the order is the same for every reader. Windows are contiguous and
-- gap-free; one is only visible once every smaller one is.
CREATE TABLE feed_windows (
    id          bigint      PRIMARY KEY,
    lower       pg_snapshot NOT NULL,
    upper       pg_snapshot NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The sequencer's state, one row: the snapshot the newest window ends at, that
-- window's id, and the newest window pruned.
CREATE TABLE feed_state (
    singleton      boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    assigned       pg_snapshot NOT NULL,
    last_window    bigint      NOT NULL DEFAULT 0,
    pruned_through bigint      NOT NULL DEFAULT 0
);
-- The feed starts with this migration; earlier history is not in it.
INSERT INTO feed_state (assigned) VALUES (pg_current_snapshot());

-- Durable named consumers: the last position each acknowledged (advance-only).
CREATE TABLE feed_consumers (
    name            text        PRIMARY KEY,
    window_id       bigint      NOT NULL,
    pos             bigint      NOT NULL,
    part            smallint    NOT NULL,
    conversation_id uuid        NOT NULL,
    key             bigint      NOT NULL,
    acked_at        timestamptz NOT NULL DEFAULT now()
);
