-- token-service schema, version 3: erasures, the audit trail, and indexes for retention.

-- EraseCustomer's requests: its idempotency key, what token-service erased at once, and
-- conversation-service's part, queued here until it succeeds (a row with complete_time
-- NULL is a call still to make). customer_id is kept as the record that the erasure
-- happened; it is purged with the audit trail.
CREATE TABLE erasures (
    request_id            TEXT    PRIMARY KEY,   -- UUID
    customer_id           TEXT    NOT NULL,
    sessions_erased       INTEGER NOT NULL,
    calls_erased          INTEGER NOT NULL,
    conversations_erased  INTEGER NOT NULL DEFAULT 0,
    messages_erased       INTEGER NOT NULL DEFAULT 0,
    attempts              INTEGER NOT NULL DEFAULT 0,
    next_attempt_time     INTEGER NOT NULL,
    last_error            TEXT,
    create_time           INTEGER NOT NULL,
    complete_time         INTEGER
) STRICT;

CREATE INDEX erasures_pending ON erasures (next_attempt_time) WHERE complete_time IS NULL;

-- The sessions an erasure scrubbed: their conversations are erased by conversation-service
-- too (an anonymous visitor's conversation is not linked to the customer id), and their
-- calls must not be in flight when it is.
CREATE TABLE erasure_sessions (
    request_id       TEXT NOT NULL REFERENCES erasures (request_id) ON DELETE CASCADE,
    session_id       TEXT NOT NULL,
    conversation_id  TEXT,
    PRIMARY KEY (request_id, session_id)
) STRICT;

-- Administrative calls and what the service did by itself (a callers-file reload).
CREATE TABLE audit_records (
    record_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    caller     TEXT    NOT NULL,
    method     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    time       INTEGER NOT NULL,
    result     TEXT    NOT NULL,
    reason     TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_records_by_time ON audit_records (time);

-- A customer's sessions, for erase and export.
CREATE INDEX chat_sessions_by_customer ON chat_sessions (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX chat_sessions_by_redeem_customer ON chat_sessions (redeem_customer_id)
    WHERE redeem_customer_id IS NOT NULL;
-- Retention: ended sessions, and links by when they stopped working.
CREATE INDEX chat_sessions_by_end ON chat_sessions (end_time) WHERE end_time IS NOT NULL;
CREATE INDEX chat_tokens_by_expiry ON chat_tokens (expire_time);
CREATE INDEX chat_tokens_by_revoke ON chat_tokens (revoke_time) WHERE revoke_time IS NOT NULL;
CREATE INDEX outbox_failed ON outbox (failed_time) WHERE failed_time IS NOT NULL;
