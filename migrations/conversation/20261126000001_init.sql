-- Conversations, messages and read state. Owned by conversation-service alone.

CREATE TABLE conversations (
    id                uuid        PRIMARY KEY,
    -- AIP-155 idempotency key of CreateConversation.
    request_id        uuid        CONSTRAINT conversations_request_id_key UNIQUE,
    provider_id       text        NOT NULL,
    customer_id       text,
    customer_name     text        NOT NULL DEFAULT '',
    customer_email    text        NOT NULL DEFAULT '',
    customer_phone    text        NOT NULL DEFAULT '',
    -- 1 = active, 2 = closed (chat.v1.ConversationStatus).
    status            smallint    NOT NULL DEFAULT 1 CHECK (status IN (1, 2)),
    origin            text        NOT NULL DEFAULT '',
    -- Seq of the newest message; assigned under this row's lock, so per conversation
    -- seq order is commit order and there are no gaps.
    head_seq          bigint      NOT NULL DEFAULT 0,
    provider_read_seq bigint      NOT NULL DEFAULT 0,
    customer_read_seq bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX conversations_provider_activity_idx
    ON conversations (provider_id, last_activity_at DESC, id DESC);
CREATE INDEX conversations_customer_activity_idx
    ON conversations (customer_id, last_activity_at DESC, id DESC)
    WHERE customer_id IS NOT NULL;

CREATE TABLE messages (
    conversation_id   uuid        NOT NULL REFERENCES conversations (id),
    seq               bigint      NOT NULL,
    id                uuid        NOT NULL,
    sender_role       smallint    NOT NULL CHECK (sender_role IN (1, 2)),
    sender_id         text        NOT NULL,
    body              text        NOT NULL,
    client_message_id text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction: inbox cursors are snapshots, and a row belongs to the
    -- window in which its transaction became visible (ids commit out of order).
    xid               xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (conversation_id, seq)
);

CREATE UNIQUE INDEX messages_client_message_id_key
    ON messages (conversation_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
CREATE INDEX messages_xid_idx ON messages (xid);

-- What an inbox shows besides messages: 1 = created, 2 = customer updated,
-- 3 = status changed. The conversation's current row is joined when read.
CREATE TABLE conversation_events (
    id              bigserial   PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    kind            smallint    NOT NULL CHECK (kind IN (1, 2, 3)),
    status          smallint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX conversation_events_xid_idx ON conversation_events (xid);
