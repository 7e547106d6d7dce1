-- SearchMessages newest first without reading every match. A btree on messages.created_at
-- lets a search walk messages newest first, keep those of the participant's conversations
-- (a probe of conversations' primary key each) and stop once it has a page, instead of
-- reading every match of a common word through the GIN index and sorting them all. The
-- search's order is (created_at, conversation_id, seq): the index gives the first key and
-- the few rows that share a created_at (one SendMessage batch) are sorted in passing.
--
-- What SendMessage pays: one more index entry per message. created_at is the batch's
-- time, so entries are appended at the right edge of the index (the page last written,
-- already in memory), not scattered; the conversation row updates stay HOT (the index is
-- on messages). Retention's deletions leave dead entries for VACUUM as the other indexes
-- do.
--
-- Built in the migration's transaction, like every index before it, not CONCURRENTLY:
-- sqlx runs a `-- no-transaction` file while holding its migration advisory lock, and
-- CREATE INDEX CONCURRENTLY waits for every transaction with an older snapshot, including
-- a replica's `SELECT pg_advisory_lock(..)` waiting for that same lock (replicas migrate
-- on start by default). PostgreSQL then reports a deadlock, cancels the build and leaves
-- an INVALID index under this name, which every later attempt trips over until someone
-- drops it. The plain build takes a SHARE lock on messages instead: reads go on, writes
-- (SendMessage, edits, deletions, retention) wait until it is built.
--
-- A database too large for that pause can have the index built beforehand, by hand,
-- outside any migration: CREATE INDEX CONCURRENTLY messages_created_at_idx ON messages
-- (created_at); this migration then only checks it. A build that failed half-way leaves
-- an invalid index, which this migration refuses rather than skip: drop it (DROP INDEX
-- CONCURRENTLY messages_created_at_idx) and build again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('messages_created_at_idx') AND NOT indisvalid) THEN
        RAISE EXCEPTION 'messages_created_at_idx exists but is invalid (a failed CREATE INDEX CONCURRENTLY): drop it and build it again, or let this migration build it';
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS messages_created_at_idx ON messages (created_at);
