-- Inbox order. Every row an inbox shows gets `pos`: one number per writing transaction,
-- drawn at its first inbox row. Writers take the conversation's row lock before that
-- (SendMessage, UpdateCustomer, SetConversationStatus), so for any two transactions that
-- touch one conversation, pos order is their commit order; across conversations it is
-- close to it. A resumed inbox is delivered by (pos, ...), a keyset, not OFFSET.
CREATE SEQUENCE inbox_pos_seq;

CREATE FUNCTION inbox_pos() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cached text := current_setting('chat.inbox_pos', true);
BEGIN
    IF cached IS NULL OR cached = '' THEN
        cached := nextval('inbox_pos_seq')::text;
        PERFORM set_config('chat.inbox_pos', cached, true);
    END IF;
    RETURN cached::bigint;
END $$;

ALTER TABLE messages ADD COLUMN pos bigint NOT NULL DEFAULT inbox_pos();
ALTER TABLE conversation_events ADD COLUMN pos bigint NOT NULL DEFAULT inbox_pos();
