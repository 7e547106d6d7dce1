-- A customer's erasure is an event of its own (kind 4), so streams and inboxes can say
-- "drop what you cached" instead of showing blank details as an update. erased_at: when
-- the customer side of the conversation was last erased (NULL: never);
-- erased_through_seq: the head seq then (the customer's messages up to it were blanked).
-- Every existing row holds kind 1-3, so the new CHECK needs no scan (NOT VALID); it
-- holds for every row written from now on.
ALTER TABLE conversation_events DROP CONSTRAINT conversation_events_kind_check;
ALTER TABLE conversation_events
    ADD CONSTRAINT conversation_events_kind_check CHECK (kind IN (1, 2, 3, 4)) NOT VALID;
ALTER TABLE conversations ADD COLUMN erased_at timestamptz;
ALTER TABLE conversations ADD COLUMN erased_through_seq bigint NOT NULL DEFAULT 0;
