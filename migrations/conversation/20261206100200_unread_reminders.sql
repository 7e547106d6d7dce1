-- Unread reminders: one per conversation, participant and unread streak. A streak is
-- named by the participant's read position when it began (reading moves it, starting a
-- new streak; new messages leave it).
CREATE TABLE reminders (
    conversation_id uuid     NOT NULL REFERENCES conversations (id),
    role            smallint NOT NULL CHECK (role IN (1, 2)),
    read_seq        bigint   NOT NULL,
    PRIMARY KEY (conversation_id, role, read_seq)
);

-- The reminders sent, numbered into the feed like the other source tables.
CREATE TABLE reminder_events (
    id              bigserial   PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    role            smallint    NOT NULL CHECK (role IN (1, 2)),
    participant_id  text        NOT NULL,
    unread          bigint      NOT NULL,
    -- The preview is read from this message when the event is read, so erasing or
    -- pruning messages leaves no copy here.
    first_seq       bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    pos             bigint      NOT NULL DEFAULT inbox_pos()
);
CREATE INDEX reminder_events_xid_idx ON reminder_events (xid);

-- The last feed window the reminder scan has read; one scanner at a time
-- holds this row (others skip it), and a scanner that dies rolls back, losing nothing.
CREATE TABLE reminder_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL DEFAULT 0
);
INSERT INTO reminder_state DEFAULT VALUES;
