-- The anonymous visitor is bound to the token-service session that opened its
-- conversation: only a participant presenting this id may act as the anonymous customer.
ALTER TABLE conversations ADD COLUMN session_id uuid;

-- token-service has always used the session id as CreateConversation's request_id (and
-- "token:<token_id>" as origin), so conversations it opened before keep working.
UPDATE conversations SET session_id = request_id
 WHERE session_id IS NULL AND origin LIKE 'token:%';
