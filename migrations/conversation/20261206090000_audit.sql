-- The audit trail of conversation-service's administrative calls (erasures and exports
-- of a customer): who (the caller's name in the callers file), what, on what, when and
-- how it ended. Kept a year by default; a record names a customer id, never contact
-- details or message text.
CREATE TABLE audit_records (
    record_id  bigserial   PRIMARY KEY,
    caller     text        NOT NULL,
    method     text        NOT NULL,
    target     text        NOT NULL,
    time       timestamptz NOT NULL DEFAULT now(),
    result     text        NOT NULL,
    reason     text        NOT NULL
);

CREATE INDEX audit_records_time_idx ON audit_records (time);
