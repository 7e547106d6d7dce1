-- token-service schema, version 2.

-- What a RedeemToken asked for besides the link, so a retry with the same request_id
-- that asks for something else is refused (REQUEST_ID_REUSED). Sessions redeemed before
-- this version recorded neither: NULL / 0.
ALTER TABLE chat_sessions ADD COLUMN redeem_customer_id TEXT;
ALTER TABLE chat_sessions ADD COLUMN new_conversation INTEGER NOT NULL DEFAULT 0;

-- The reason (google.rpc.ErrorInfo) conversation-service gave when it refused a queued
-- UpdateCustomer for good; cleared when one succeeds. GetSession shows it.
ALTER TABLE chat_sessions ADD COLUMN link_error_reason TEXT;
-- The same reason on the refused call, which stays in the outbox (failed_time set) for
-- operators.
ALTER TABLE outbox ADD COLUMN error_reason TEXT;

-- outbox.lease_until is no longer read: a session's calls are serialised in the process
-- (one turn per session), not by leases in the file, which reopening the connection after
-- an I/O error used to void. The column stays (always 0) so nothing that names it breaks.
