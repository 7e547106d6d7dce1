-- A deletion clears the fingerprints of the message's earlier changes: found by message,
-- not by reading every change of the conversation. Only edits and deletions write this
-- table, so the index costs sends nothing.
CREATE INDEX message_changes_message_idx ON message_changes (conversation_id, seq);
