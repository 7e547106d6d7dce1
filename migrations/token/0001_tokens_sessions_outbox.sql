-- token-service schema, version 1 (PRAGMA user_version, applied by rusqlite_migration).
-- Times are Unix microseconds (UTC). Secrets are never stored: only their SHA-256.

CREATE TABLE chat_tokens (
    token_id     TEXT    PRIMARY KEY,            -- UUIDv7
    provider_id  TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    label        TEXT    NOT NULL,
    create_time  INTEGER NOT NULL,
    expire_time  INTEGER NOT NULL,
    max_uses     INTEGER NOT NULL CHECK (max_uses >= 0),   -- 0 = unlimited
    use_count    INTEGER NOT NULL DEFAULT 0 CHECK (use_count >= 0),
    revoke_time  INTEGER,
    CHECK (max_uses = 0 OR use_count <= max_uses)
) STRICT;

-- ListTokens: a provider's links, newest first.
CREATE INDEX chat_tokens_by_provider ON chat_tokens (provider_id, create_time DESC, token_id DESC);

CREATE TABLE chat_sessions (
    session_id       TEXT    PRIMARY KEY,        -- UUIDv7
    token_id         TEXT    NOT NULL REFERENCES chat_tokens (token_id),
    provider_id      TEXT    NOT NULL,
    -- RedeemToken's idempotency key: one redemption, one session.
    request_id       TEXT    NOT NULL UNIQUE,
    secret_hash      BLOB    NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    customer_id      TEXT,
    -- NULL while the conversation is being created (PENDING).
    conversation_id  TEXT,
    create_time      INTEGER NOT NULL,
    end_time         INTEGER
) STRICT;

CREATE INDEX chat_sessions_by_token ON chat_sessions (token_id);

-- Calls to conversation-service that must happen, in order per session. A row is deleted
-- once its call succeeded and its effect is recorded, in the same transaction.
CREATE TABLE outbox (
    job_id             INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id         TEXT    NOT NULL REFERENCES chat_sessions (session_id),
    kind               TEXT    NOT NULL CHECK (kind IN ('create_conversation', 'update_customer')),
    -- CreateConversation: its request_id (= the session id), reuse_active, origin.
    request_id         TEXT,
    reuse_active       INTEGER NOT NULL DEFAULT 0,
    origin             TEXT,
    -- Customer fields; NULL means "leave unchanged".
    customer_id        TEXT,
    name               TEXT,
    email              TEXT,
    phone              TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_time  INTEGER NOT NULL,
    -- Held by whoever is calling right now (the RPC that queued it, or the worker).
    lease_until        INTEGER NOT NULL DEFAULT 0,
    -- Set when conversation-service refused the call for good; kept for operators.
    failed_time        INTEGER,
    last_error         TEXT,
    create_time        INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_by_session ON outbox (session_id, job_id);
