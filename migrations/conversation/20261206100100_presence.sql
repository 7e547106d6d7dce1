-- Presence: whether a participant has at least one open stream on any replica.
-- Each replica keeps a row per participant it serves, refreshed every second with an
-- expiry (so a replica killed without a word stops counting once its rows expire).
CREATE TABLE presence (
    role           smallint    NOT NULL CHECK (role IN (1, 2)),
    participant_id text        NOT NULL,
    replica        uuid        NOT NULL,
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (role, participant_id, replica)
);
CREATE INDEX presence_expires_idx ON presence (expires_at);

-- The presence last announced per participant; changed only under its row lock, so two
-- replicas never announce the same change twice.
CREATE TABLE presence_state (
    role           smallint NOT NULL,
    participant_id text     NOT NULL,
    online         boolean  NOT NULL,
    PRIMARY KEY (role, participant_id)
);

-- Announced changes, numbered into the feed like the other source tables.
CREATE TABLE presence_events (
    id             bigserial   PRIMARY KEY,
    role           smallint    NOT NULL CHECK (role IN (1, 2)),
    participant_id text        NOT NULL,
    online         boolean     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    xid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    pos            bigint      NOT NULL DEFAULT inbox_pos()
);
CREATE INDEX presence_events_xid_idx ON presence_events (xid);
