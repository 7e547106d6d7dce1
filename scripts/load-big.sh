#!/usr/bin/env bash
# Fills a fresh PostgreSQL database and a fresh token-service SQLite file with years of
# chat, in SQL, so reads and writes can be measured on data of a production's size:
#
#   scripts/load-big.sh                  1M conversations, 10M messages, 1M links, 5M sessions
#   scripts/load-big.sh --scale 0.01     the same shape a hundred times smaller
#
# Shape: 10,000 providers, plus `prov-burst` with 10% of all conversations, a fifth of
# which had their last activity in one minute (a campaign burst); 80% of conversations
# linked to a customer (name, email, phone), the rest anonymous; 10 messages each, the
# newest up to 3 years old, a quarter of conversations with messages the provider has not
# read. Writes the database `LOAD_DB` (default chat_big, dropped first) and the file
# `LOAD_SQLITE` (default data/big/token.db, replaced). Prints the URL and path to use.
# Uses the debug binaries (`migrate` only); needs the local PostgreSQL and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=1
if [[ "${1:-}" == "--scale" ]]; then scale="${2:?--scale needs a factor}"; fi
db=${LOAD_DB:-chat_big}
sqlite=${LOAD_SQLITE:-data/big/token.db}
pg=(-h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q)
url="postgres://postgres@127.0.0.1:5432/$db"
conversations=$(python3 -c "print(max(100, int(1_000_000 * $scale)))")
tokens=$(python3 -c "print(max(100, int(1_000_000 * $scale)))")
sessions=$((tokens * 5))

scripts/ensure-postgres.sh
cargo build --locked -q -p conversation-service -p token-service --bins
bin=${CARGO_TARGET_DIR:-target}/debug

echo "load-big: $conversations conversations, $((conversations * 10)) messages into $db" >&2
psql "${pg[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
"$bin/conversation-service" migrate --database-url "$url" >/dev/null
started=$SECONDS
psql "${pg[@]}" -d "$db" -v conversations="$conversations" -f - <<'SQL'
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
-- h(text): a stable pseudo-random number in [0, 2^31) from a name, so every load is the same.
CREATE FUNCTION pg_temp.h(t text) RETURNS bigint LANGUAGE sql IMMUTABLE
    RETURN hashtext(t)::bigint & 2147483647;
-- The message search index (migration 20261206120000) is built once after the load, in
-- bulk, rather than entry by entry during ten million inserts; its definition is read
-- from the migrated database, so the two cannot drift apart.
SELECT pg_get_indexdef('messages_body_search_idx'::regclass) AS search_index \gset
DROP INDEX messages_body_search_idx;

INSERT INTO conversations (id, request_id, provider_id, customer_id, customer_name,
                           customer_email, customer_phone, status, origin, head_seq,
                           provider_read_seq, customer_read_seq, created_at,
                           last_activity_at, inbox_at, session_id)
SELECT md5('conversation-' || i)::uuid,
       md5('request-' || i)::uuid,
       CASE WHEN i % 10 = 0 THEN 'prov-burst' ELSE 'prov-' || (i % 10000) END,
       CASE WHEN i % 5 <> 0 THEN 'cust-' || i END,
       CASE WHEN i % 5 <> 0 THEN (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + i % 8]
                                 || ' ' || (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson'])[1 + (i / 8) % 8]
                                 || ' ' || i ELSE '' END,
       CASE WHEN i % 5 <> 0 THEN 'customer' || i || '@example.com' ELSE '' END,
       CASE WHEN i % 5 <> 0 THEN '+44 20 ' || lpad((i % 100000000)::text, 8, '0') ELSE '' END,
       CASE WHEN i % 7 = 0 THEN 2 ELSE 1 END,
       'token:' || md5('token-' || i)::uuid,
       10,
       CASE WHEN i % 4 = 0 THEN 10 - 1 - i % 5 ELSE 10 END,
       CASE WHEN i % 3 = 0 THEN 8 ELSE 10 END,
       last - interval '10 hours',
       last,
       last,
       md5('request-' || i)::uuid
  FROM generate_series(1, :conversations) AS i,
       LATERAL (SELECT CASE
                  -- The burst: a fifth of prov-burst's conversations, all in one minute.
                  WHEN i % 10 = 0 AND i % 50 = 0
                    THEN timestamptz '2026-12-01 12:00:00+00' + (i % 60000) * interval '1 ms'
                  ELSE now() - (pg_temp.h('activity-' || i) % (3 * 365 * 24 * 3600)) * interval '1 second'
                END AS last) AS t;

INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body, created_at, pos)
SELECT c.id, s, md5('message-' || c.id || '-' || s)::uuid,
       CASE WHEN s % 2 = 0 THEN 1 ELSE 2 END,
       CASE WHEN s % 2 = 0 THEN c.provider_id ELSE coalesce(c.customer_id, '') END,
       (ARRAY['Hello','Hi','Thanks','Sure','Great','Sorry','Okay','Morning'])[1 + pg_temp.h(c.id || 'a' || s) % 8]
         || ', ' || (ARRAY['the leak','my kitchen sink','the boiler','a quote','the invoice','your visit','the garden','the roof'])[1 + pg_temp.h(c.id || 'b' || s) % 8]
         || ' ' || (ARRAY['is fixed','needs a look','can wait until Monday','costs 120 pounds','was paid','is at 3 pm','looks fine','is dripping again'])[1 + pg_temp.h(c.id || 'c' || s) % 8]
         || '. Reference ' || pg_temp.h(c.id || 'd' || s) % 100000 || '.',
       c.last_activity_at - (10 - s) * interval '1 hour',
       c.n * 10 + s
  FROM (SELECT id, provider_id, customer_id, last_activity_at,
               row_number() OVER (ORDER BY last_activity_at) AS n
          FROM conversations) AS c,
       generate_series(1, 10) AS s;

INSERT INTO conversation_events (conversation_id, kind, status, created_at, pos)
SELECT id, 1, NULL, created_at, row_number() OVER (ORDER BY created_at)
  FROM conversations;
:search_index;
-- New writes draw inbox positions after everything loaded.
SELECT setval('inbox_pos_seq', (SELECT max(pos) + 1 FROM messages));
VACUUM ANALYZE conversations;
VACUUM ANALYZE messages;
VACUUM ANALYZE conversation_events;
SQL
echo "load-big: PostgreSQL loaded in $((SECONDS - started)) s" >&2

echo "load-big: $tokens links, $sessions sessions into $sqlite" >&2
mkdir -p "$(dirname "$sqlite")"
rm -f "$sqlite" "$sqlite-wal" "$sqlite-shm"
"$bin/token-service" migrate --database "$sqlite" >/dev/null
started=$SECONDS
python3 - "$sqlite" "$tokens" "$sessions" <<'PY'
import sqlite3, sys
path, tokens, sessions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = sqlite3.connect(path)
db.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
now_us = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000000)"
with db:
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO chat_tokens (token_id, provider_id, secret_hash, label, create_time,
                                 expire_time, max_uses, use_count, revoke_time)
        SELECT printf('00000000-0000-7000-8000-%012d', i), 'prov-' || (i % 10000),
               randomblob(32), 'Flyer ' || i, {now_us} - i * 1000000,
               {now_us} + 30 * 86400000000 - (i % 3) * 60 * 86400000000,
               0, 5, CASE WHEN i % 20 = 0 THEN {now_us} END
          FROM n""", (tokens,))
    db.execute(f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO chat_sessions (session_id, token_id, provider_id, request_id, secret_hash,
                                   customer_id, conversation_id, create_time, end_time)
        SELECT printf('00000000-0000-7000-9000-%012d', i),
               printf('00000000-0000-7000-8000-%012d', 1 + i % ?), 'prov-' || ((1 + i % ?) % 10000),
               printf('00000000-0000-4000-a000-%012d', i), randomblob(32),
               CASE WHEN i % 5 <> 0 THEN 'cust-' || i END,
               printf('00000000-0000-4000-b000-%012d', i), {now_us} - i * 100000,
               CASE WHEN i % 4 = 0 THEN {now_us} END
          FROM n""", (sessions, tokens, tokens))
db.execute("ANALYZE")
db.close()
PY
echo "load-big: SQLite loaded in $((SECONDS - started)) s" >&2
echo "DATABASE_URL=$url"
echo "TOKEN_DB_PATH=$sqlite"
