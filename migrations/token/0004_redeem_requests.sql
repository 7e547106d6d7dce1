-- token-service schema, version 4: RedeemToken's request ids are kept for a window.
--
-- A caller's request_id is a random UUID (AIP-155). Kept for ever in the unique index on
-- chat_sessions.request_id, each redemption's insert took a random leaf of a B-tree as large
-- as every session ever opened: at 5M sessions that alone cost a quarter of RedeemToken's
-- throughput. Retries come within minutes, so the ids now live here for
-- REDEEM_RETRY_WINDOW (24 h unless set; the retention sweeper removes older ones), and this
-- index stays the size of that window.
CREATE TABLE redeem_requests (
    request_id   TEXT    PRIMARY KEY,
    session_id   TEXT    NOT NULL REFERENCES chat_sessions (session_id) ON DELETE CASCADE,
    create_time  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX redeem_requests_by_session ON redeem_requests (session_id);
CREATE INDEX redeem_requests_by_time ON redeem_requests (create_time);

-- chat_sessions.request_id is no longer read. A session opened from this version on holds
-- its own session id there: unique, as the column's UNIQUE index demands, and time-ordered,
-- so that index grows at its end. SQLite drops neither the column nor its index without
-- rebuilding the table.

-- The last week's redemptions keep their retries; a window set longer than a week is
-- complete a week after the upgrade.
INSERT INTO redeem_requests (request_id, session_id, create_time)
SELECT request_id, session_id, create_time FROM chat_sessions
WHERE create_time >= (CAST(strftime('%s', 'now') AS INTEGER) - 7 * 86400) * 1000000;
