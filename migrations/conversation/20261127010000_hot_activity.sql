-- Every SendMessage batch updates each conversation it touches (head_seq, read positions,
-- last_activity_at). With last_activity_at in the inbox-order indexes, each of those
-- updates wrote a new row version on another page and three index entries (PRIMARY
-- KEY, provider and customer order), and left the old ones for VACUUM. The indexes now
-- order by the minute of the last activity instead, a generated column that changes at
-- most once a minute per conversation, so the other updates are HOT: the new version
-- stays on the page and no index is written. ListConversations sorts the conversations
-- of one minute by their exact last_activity_at (an incremental sort on the index), so
-- its order is unchanged.

-- Room on each page for the updated versions of its rows; set first, so the rewrite that
-- adding a stored column makes (under an ACCESS EXCLUSIVE lock) already leaves it.
ALTER TABLE conversations SET (fillfactor = 80);
-- The minute of a time: the column below and ListConversations' page condition both use
-- it, so the width of the step is written once.
CREATE FUNCTION chat_activity_minute(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin('1 minute', at, '2000-01-01 00:00:00+00');
ALTER TABLE conversations
    ADD COLUMN activity_minute timestamptz
        GENERATED ALWAYS AS (chat_activity_minute(last_activity_at)) STORED;

DROP INDEX conversations_provider_activity_idx;
DROP INDEX conversations_customer_activity_idx;
CREATE INDEX conversations_provider_activity_idx
    ON conversations (provider_id, activity_minute DESC);
CREATE INDEX conversations_customer_activity_idx
    ON conversations (customer_id, activity_minute DESC)
    WHERE customer_id IS NOT NULL;
