-- Messages that change: edits, deletions (the text removed, a tombstone keeps the seq)
-- and attachments by reference.
--
-- Constant defaults and NULLs make these ADD COLUMNs metadata-only: no table rewrite.
-- None of the new columns is indexed, so sends stay HOT updates of conversations.
ALTER TABLE messages ADD COLUMN edited_at timestamptz;
ALTER TABLE messages ADD COLUMN edit_count integer NOT NULL DEFAULT 0;
-- Set when deleted; body is '' and attachments NULL from then on.
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;
-- The references (JSON array of {uri, content_type, size_bytes, sha256, file_name,
-- width, height}); NULL when the message has none.
ALTER TABLE messages ADD COLUMN attachments jsonb;
-- The conversation's change_seq of the message's latest edit or deletion (0: none): a
-- stream that reads the message from the table then knows which changes it shows.
ALTER TABLE messages ADD COLUMN last_change bigint NOT NULL DEFAULT 0;

-- A conversation's position of changes: bumped (under the row lock) by every edit and
-- deletion, so per conversation change order is commit order with no gaps, like seq.
ALTER TABLE conversations ADD COLUMN change_seq bigint NOT NULL DEFAULT 0;

-- One row per edit or deletion. It names the message and the kind; the text is never
-- copied here (a deleted message leaves no trace of its body). request_id and
-- fingerprint make EditMessage and DeleteMessage idempotent: the fingerprint is a
-- SHA-256 of the request (kind, message, new body), keyed by the request_id.
CREATE TABLE message_changes (
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    change_seq      bigint      NOT NULL,
    seq             bigint      NOT NULL,
    -- 1 = edited, 2 = deleted.
    kind            smallint    NOT NULL CHECK (kind IN (1, 2)),
    request_id      uuid,
    fingerprint     bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- StreamInbox shows changes too: windowed by writing transaction and ordered by
    -- pos, like messages and conversation_events (migration 20261126120100).
    xid             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    pos             bigint      NOT NULL DEFAULT inbox_pos(),
    PRIMARY KEY (conversation_id, change_seq)
);

CREATE INDEX message_changes_xid_idx ON message_changes (xid);

CREATE UNIQUE INDEX message_changes_request_id_key
    ON message_changes (conversation_id, request_id) WHERE request_id IS NOT NULL;
