-- A client_message_id is the sender's idempotency key: the provider's "1" and the
-- customer's "1" are different messages. A conversation has one provider and one
-- customer, so the role is the sender (the anonymous visitor and the customer later
-- linked are the same side).
DROP INDEX messages_client_message_id_key;
CREATE UNIQUE INDEX messages_sender_client_message_id_key
    ON messages (conversation_id, sender_role, client_message_id)
    WHERE client_message_id IS NOT NULL;
