-- CreateConversation's request_id decides first: a retry returns what the first call
-- returned. A call that created a conversation keeps its key in conversations.request_id;
-- a call answered with an existing conversation (reuse_active) keeps it here.
CREATE TABLE conversation_requests (
    request_id      uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id),
    created_at      timestamptz NOT NULL DEFAULT now()
);
