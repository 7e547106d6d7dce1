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
# The PostgreSQL rows come from scripts/load-big.sql (run with psql on the migrated
# database; the plan test in conversation-service/tests/api/plans.rs loads it too), which
# builds the secondary indexes of conversations and messages once, after the rows.
# `--sqlite-only` leaves PostgreSQL alone. Sessions have random request ids and secret
# digests, as callers and the releases before timed secrets made them.
# Uses the debug binaries (`migrate` only); needs the local PostgreSQL and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

scale=1
postgres=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scale) scale="${2:?--scale needs a factor}"; shift 2 ;;
    --sqlite-only) postgres=0; shift ;;
    *) echo "usage: $0 [--scale FACTOR] [--sqlite-only]" >&2; exit 2 ;;
  esac
done
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

if [[ $postgres == 1 ]]; then
  echo "load-big: $conversations conversations, $((conversations * 10)) messages into $db" >&2
  psql "${pg[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
  "$bin/conversation-service" migrate --database-url "$url" >/dev/null
  started=$SECONDS
  psql "${pg[@]}" -d "$db" -v conversations="$conversations" -f scripts/load-big.sql
  echo "load-big: PostgreSQL loaded in $((SECONDS - started)) s" >&2
fi

echo "load-big: $tokens links, $sessions sessions into $sqlite" >&2
mkdir -p "$(dirname "$sqlite")"
rm -f "$sqlite" "$sqlite-wal" "$sqlite-shm"
"$bin/token-service" migrate --database "$sqlite" >/dev/null
started=$SECONDS
python3 - "$sqlite" "$tokens" "$sessions" <<'PY'
import sqlite3, sys
path, tokens, sessions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Sessions spread over 90 days, SESSION_RETENTION's default: a file that holds 5M of them
# in steady state took about 55,000 redemptions a day.
spacing_us = 90 * 86400 * 1000000 // sessions
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
               lower(printf('%s-%s-4%s-a%s-%s', hex(randomblob(4)), hex(randomblob(2)),
                            substr(hex(randomblob(2)), 2), substr(hex(randomblob(2)), 2),
                            hex(randomblob(6)))),
               randomblob(32),
               CASE WHEN i % 5 <> 0 THEN 'cust-' || i END,
               printf('00000000-0000-4000-b000-%012d', i), {now_us} - i * ?,
               CASE WHEN i % 4 = 0 THEN {now_us} END
          FROM n""", (sessions, tokens, tokens, spacing_us))
    # What migration 0004 keeps of them: the request ids of the last day's redemptions.
    db.execute(f"""
        INSERT INTO redeem_requests (request_id, session_id, create_time)
        SELECT request_id, session_id, create_time FROM chat_sessions
         WHERE create_time >= {now_us} - 86400000000""")
db.execute("ANALYZE")
db.close()
PY
echo "load-big: SQLite loaded in $((SECONDS - started)) s" >&2
echo "DATABASE_URL=$url"
echo "TOKEN_DB_PATH=$sqlite"
