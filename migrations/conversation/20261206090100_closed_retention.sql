-- Retention of closed conversations' messages. closed_at: when the conversation was last
-- closed (NULL while active). kept_from_seq: messages with seq <= it were deleted by
-- retention; a stream that asks to start before it is OUT_OF_RANGE, never a silent
-- partial replay. Neither column is in an index an ordinary send updates, so sends stay
-- HOT updates.
ALTER TABLE conversations ADD COLUMN closed_at timestamptz;
ALTER TABLE conversations ADD COLUMN kept_from_seq bigint NOT NULL DEFAULT 0;
UPDATE conversations SET closed_at = last_activity_at WHERE status = 2;
CREATE INDEX conversations_closed_at_idx ON conversations (closed_at) WHERE closed_at IS NOT NULL;
