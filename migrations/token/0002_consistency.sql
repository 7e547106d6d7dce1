-- token-service schema, version 2.

-- What a RedeemToken asked for besides the link, so a retry with the same request_id
-- that asks for something else is refused (REQUEST_ID_REUSED). Sessions redeemed before
-- this version recorded neither: NULL / 0.
ALTER TABLE chat_sessions ADD COLUMN redeem_customer_id TEXT;
ALTER TABLE chat_sessions ADD COLUMN new_conversation INTEGER NOT NULL DEFAULT 0;
