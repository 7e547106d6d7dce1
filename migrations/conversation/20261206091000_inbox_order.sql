-- ListConversations without sorting a burst. Ordering by `activity_minute` kept SendMessage's
-- updates HOT but made every page sort all of an owner's conversations of one minute (a
-- campaign: 20,000 of them). The order key is now `inbox_at`, which equals
-- `last_activity_at` whenever it is written and is written only when the minute of the last
-- activity changes (SendMessage, in its one statement) or when that minute has closed
-- (`Store::settle_inbox_order`, a background task). So an update is still HOT except at
-- most once a minute per conversation, plus once after its last busy minute.
--
-- Rows whose `inbox_at` is older than `inbox_settled.through` are settled: `inbox_at` is
-- their exact last activity, so the index gives their order with no sort. The rest (the
-- last minute or two of activity) are few and are sorted by `last_activity_at`.
ALTER TABLE conversations ADD COLUMN inbox_at timestamptz;
UPDATE conversations SET inbox_at = last_activity_at;
-- Both default to now(), the transaction's start: a new conversation is settled.
ALTER TABLE conversations
    ALTER COLUMN inbox_at SET NOT NULL,
    ALTER COLUMN inbox_at SET DEFAULT now();

DROP INDEX conversations_provider_activity_idx;
DROP INDEX conversations_customer_activity_idx;
ALTER TABLE conversations DROP COLUMN activity_minute;

CREATE INDEX conversations_provider_inbox_idx
    ON conversations (provider_id, inbox_at DESC, id DESC);
CREATE INDEX conversations_customer_inbox_idx
    ON conversations (customer_id, inbox_at DESC, id DESC)
    WHERE customer_id IS NOT NULL;
-- The settling task finds the conversations of the minutes that closed.
CREATE INDEX conversations_inbox_at_idx ON conversations (inbox_at);

-- One row: every conversation whose inbox_at is before `through` has inbox_at =
-- last_activity_at. Locked by the settling task, so replicas settle one at a time.
CREATE TABLE inbox_settled (
    singleton boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    through   timestamptz NOT NULL
);
INSERT INTO inbox_settled (through) VALUES (chat_activity_minute(now()));
