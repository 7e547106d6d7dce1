#!/usr/bin/env bash
# One benchmark command: builds once, runs every measurement of issue 13 on fresh
# databases, prints a table and, as its last line, one RESULT line. A benchmark, not a
# test: it asserts nothing about speed.
#
#   scripts/bench.sh            release build, 10 s phases, 2,000 idle streams
#   scripts/bench.sh --smoke    debug build, 2 s phases, 200 streams (checks that it runs)
#   scripts/bench.sh --streams-100k   only 100,000 streams over 64 connections to one process
#                               (BENCH_MANY_STREAMS): KiB per stream, delivery p99 with all open
#
# BENCH_SECONDS, BENCH_STREAMS override the phase length and the idle stream count;
# BENCH_NAIVE_CLIENTS the pgbench clients of the naive reference (default 16: NOTIFY
# serialises its commits anyway, and the PostgreSQL is shared); BENCH_CONNECTIONS the
# HTTP/2 connections SendMessage's 64 senders spread over (bench --connections,
# default 4). delivery_p99_ms is the delivery under load (bench's last phase: 1,000
# streams open over two replicas, background sends at half the measured SendMessage
# rate); the one-at-a-time delivery on a quiet service is in the table too.
# send_64conn_per_s is SendMessage against the service as its own process with 64
# senders on 64 connections (one call in flight each), next to the same process at 4
# connections (send_4conn_process_per_s); cpu_us_per_msg_* are the CPU time per message
# of that process and of all PostgreSQL processes at 4 connections (from /proc, so the
# senders' CPU is not in them); floor_* are the same callers on grpc.health.v1.Health/Check
# (a call with nothing behind it): the stack's CPU per call on each side at 4 connections,
# and its 64-connection rate over its 4-connection one. Needs the local
# PostgreSQL (scripts/ensure-postgres.sh), psql and pgbench. Databases it creates are
# dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0 streams_100k=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    --streams-100k) streams_100k=1 ;;
    *) echo "unknown argument: $arg" >&2 && exit 2 ;;
  esac
done
if ((smoke)); then
  profile=() dir=${CARGO_TARGET_DIR:-target}/debug seconds=${BENCH_SECONDS:-2} streams=${BENCH_STREAMS:-200}
  deliveries=200 callers=4,64 fanout_messages=50 many=${BENCH_MANY_STREAMS:-2000}
else
  profile=(--release) dir=${CARGO_TARGET_DIR:-target}/release seconds=${BENCH_SECONDS:-10} streams=${BENCH_STREAMS:-2000}
  deliveries=2000 callers=4,16,64,128,256 fanout_messages=200 many=${BENCH_MANY_STREAMS:-100000}
fi
naive_clients=${BENCH_NAIVE_CLIENTS:-16}
connections=${BENCH_CONNECTIONS:-4}
pg=(-h 127.0.0.1 -U postgres)
logs=$(mktemp -d)
# The send benchmark leaves its databases (bench_ref_*, bench_svc_*) behind: those that
# appeared while it ran are dropped after it.
send_databases() {
  psql "${pg[@]}" -d postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'bench\_ref\_%' OR datname LIKE 'bench\_svc\_%'" | sort
}
drop_new_send_databases() {
  comm -13 "$logs/databases" <(send_databases) | while read -r db; do
    psql "${pg[@]}" -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
  done
}
trap 'rm -rf "$logs"' EXIT

scripts/ensure-postgres.sh
cargo build "${profile[@]}" --locked -p conversation-service -p token-service \
  --bin conversation-service --example bench --example streams_bench --example redeem_bench

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M UTC')

# First number after the word `$2` on the first line of file `$1` matching `$3`.
after_word() { grep -m1 -- "$3" "$1" | awk -v w="$2" '{for (i = 1; i < NF; i++) if ($i == w) {print $(i + 1); exit}}'; }
# The value of `key=` in file `$1`.
value_of() { grep -o -- "$2=[0-9.]*" "$1" | tail -1 | cut -d= -f2; }
or_na() { [[ -n "${1:-}" ]] && echo "$1" || echo n/a; }

# Each phase starts from a clean checkpoint, so one phase's WAL (the pgbench ceiling
# writes ~1.7M rows) is not flushed during the next.
checkpoint() { psql "${pg[@]}" -d postgres -qc CHECKPOINT || true; }

# --streams-100k: this phase alone (about 2 minutes). The service runs as its own process;
# the streams' client side (this benchmark) costs memory and CPU of its own.
if ((streams_100k)); then
  checkpoint
  echo "== $many streams over 64 connections (conversation-service/examples/streams_bench.rs --many-streams)"
  "$dir/examples/streams_bench" --service-bin "$dir/conversation-service" --many-streams "$many" \
    --connections 64 --seconds "$seconds" --deliveries "$deliveries" | tee "$logs/many" || true
  echo
  echo "Benchmark, $started, ${profile[*]:-debug} build, $many streams over 64 connections"
  echo "machine: $machine; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "RESULT streams_100k_kib=$(or_na "$(value_of "$logs/many" many_stream_kib)") delivery_p99_100k_ms=$(or_na "$(value_of "$logs/many" many_delivery_p99_ms)")"
  exit 0
fi

checkpoint
echo "== SendMessage (conversation-service/examples/bench.rs)"
send_databases >"$logs/databases"
"$dir/examples/bench" --seconds "$seconds" --clients 64 --conversations 64 --deliveries "$deliveries" \
  --connections "$connections" --service-bin "$dir/conversation-service" | tee "$logs/send" || true
drop_new_send_databases
send=$(awk '/SendMessage \(gRPC\)/ {for (i = 1; i < NF; i++) if ($(i + 1) == "msg/s") {print $i; exit}}' "$logs/send")
# Delivery to a stream on the other replica: one at a time on a quiet service, then the
# probes of the section `under load` (bench's last phase).
quiet_p99=$(sed -n '/other replica/,$p' "$logs/send" | after_word /dev/stdin p99 "received") || true
loaded_p50=$(sed -n '/under load/,/event feed/p' "$logs/send" | after_word /dev/stdin p50 "received") || true
delivery_p99=$(sed -n '/under load/,/event feed/p' "$logs/send" | after_word /dev/stdin p99 "received") || true
edit=$(awk '/EditMessage \(gRPC\)/ {for (i = 1; i < NF; i++) if ($(i + 1) == "msg/s") {print $i; exit}}' "$logs/send") || true
delete=$(awk '/DeleteMessage \(gRPC\)/ {for (i = 1; i < NF; i++) if ($(i + 1) == "msg/s") {print $i; exit}}' "$logs/send") || true
# The event feed phase: how many message events one StreamEvents consumer received per
# second while the senders ran closed-loop, and their lag from creation.
feed_per_s=$(awk '/created -> received on StreamEvents/ {for (i = 1; i < NF; i++) if ($(i + 1) == "msg/s") {print $i; exit}}' "$logs/send") || true
feed_p99=$(sed -n '/event feed/,$p' "$logs/send" | after_word /dev/stdin p99 "received on StreamEvents") || true
# The service as its own process: 64 senders over 4 connections, then over one
# connection each, and the CPU time per message of the service and of PostgreSQL.
rate_of() { awk -v what="$1" 'index($0, what) {for (i = 1; i < NF; i++) if ($(i + 1) == "msg/s") {print $i; exit}}' "$logs/send"; }
proc4=$(rate_of "own process, 4 connections") || true
conn64=$(rate_of "own process, 1 connection each") || true
cpu_service=$(after_word "$logs/send" service "CPU per message (4 connections)") || true
cpu_postgres=$(after_word "$logs/send" PostgreSQL "CPU per message (4 connections)") || true
# The floor: the same callers and connections on grpc.health.v1.Health/Check, a call with
# nothing behind it: what the HTTP/2 and gRPC stack costs per call on each side.
floor_service=$(after_word "$logs/send" service "CPU per call (4 connections)") || true
floor_callers=$(after_word "$logs/send" callers "CPU per call (4 connections)") || true
floor4=$(rate_of "Health/Check (floor), own process, 4 connections") || true
floor64=$(rate_of "Health/Check (floor), own process, 1 connection each") || true
floor_share=""
if [[ -n "$floor4" && -n "$floor64" ]]; then
  floor_share=$(awk -v a="$floor64" -v b="$floor4" 'BEGIN {if (b > 0) printf "%.2f", a / b}')
fi

checkpoint
echo "== PostgreSQL references (pgbench on the project's schema)"
refdb="bench_pgref_$$"
psql "${pg[@]}" -qc "CREATE DATABASE $refdb"
for migration in migrations/conversation/*.sql; do
  psql "${pg[@]}" -d "$refdb" -q -v ON_ERROR_STOP=1 -f "$migration"
done
psql "${pg[@]}" -d "$refdb" -q -c "CREATE TABLE bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
  INSERT INTO bench_ids SELECT g, gen_random_uuid() FROM generate_series(1, 64) g;
  INSERT INTO conversations (id, provider_id) SELECT id, 'bench' FROM bench_ids;"
# What a naive SendMessage does: lock the conversation and take the next seq, insert,
# NOTIFY, commit; one transaction per message.
cat >"$logs/naive.sql" <<'SQL'
\set n random(1, 64)
BEGIN;
UPDATE conversations c SET head_seq = c.head_seq + 1, last_activity_at = now() FROM bench_ids b WHERE b.n = :n AND c.id = b.id RETURNING c.id AS cid, c.head_seq AS seq \gset
INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) VALUES (':cid', :seq, gen_random_uuid(), 1, 'bench', repeat('x', 100));
SELECT pg_notify('chat_events', '{"k":"m","m":[{"c":":cid","s":' || :seq || ',"p":"bench"}]}');
COMMIT;
SQL
# The ceiling for the same rows: 32 messages per transaction, one NOTIFY.
cat >"$logs/batched.sql" <<'SQL'
\set n random(1, 64)
BEGIN;
UPDATE conversations c SET head_seq = c.head_seq + 32, last_activity_at = now() FROM bench_ids b WHERE b.n = :n AND c.id = b.id RETURNING c.id AS cid, c.head_seq AS seq \gset
INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body) SELECT ':cid', :seq - 32 + g, gen_random_uuid(), 1, 'bench', repeat('x', 100) FROM generate_series(1, 32) g;
SELECT pg_notify('chat_events', '{"k":"m","m":[{"c":":cid","s":' || :seq || ',"p":"bench"}]}');
COMMIT;
SQL
tps() { pgbench "${pg[@]}" -n -f "$1" -c "$2" -j 2 -T "$seconds" "$refdb" 2>&1 | awk '/^tps =/ {printf "%.0f", $3}'; }
naive=$(tps "$logs/naive.sql" "$naive_clients" || true)
echo "naive, $naive_clients clients: $(or_na "$naive") msg/s"
batched=""
for clients in 2 4 8; do
  rate=$(tps "$logs/batched.sql" "$clients" || true)
  [[ -z "$rate" ]] && continue
  rows=$((rate * 32))
  echo "batched 32/tx, $clients clients: $rows rows/s"
  if [[ -z "$batched" ]] || ((rows > batched)); then batched=$rows; fi
done
psql "${pg[@]}" -qc "DROP DATABASE IF EXISTS $refdb WITH (FORCE)"

checkpoint
echo "== RedeemToken end to end (token-service/examples/redeem_bench.rs)"
"$dir/examples/redeem_bench" --seconds "$seconds" --callers "$callers" | tee "$logs/redeem" || true
redeem=$(value_of "$logs/redeem" redeem_per_s)

checkpoint
echo "== Streams (conversation-service/examples/streams_bench.rs)"
"$dir/examples/streams_bench" --service-bin "$dir/conversation-service" --streams "$streams" \
  --viewers 10 --fanout-messages "$fanout_messages" | tee "$logs/streams" || true
idle_kib=$(value_of "$logs/streams" idle_stream_kib)
reads=$(value_of "$logs/streams" reads_per_message)

echo
echo "Benchmark, $started, ${profile[*]:-debug} build, ${seconds} s phases"
echo "machine: $machine; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-66s %10s\n' "measure" "value"
printf '%-66s %10s\n' "SendMessage, 64 clients, $connections connections (msg/s)" "$(or_na "$send")"
printf '%-66s %10s\n' "SendMessage, service as its own process, 4 connections (msg/s)" "$(or_na "$proc4")"
printf '%-66s %10s\n' "SendMessage, own process, 64 connections, 1 call each (msg/s)" "$(or_na "$conn64")"
printf '%-66s %10s\n' "CPU per message at 4 connections: service process (us)" "$(or_na "$cpu_service")"
printf '%-66s %10s\n' "CPU per message at 4 connections: PostgreSQL, all processes (us)" "$(or_na "$cpu_postgres")"
printf '%-66s %10s\n' "floor (Health/Check), 4 connections: service CPU per call (us)" "$(or_na "$floor_service")"
printf '%-66s %10s\n' "floor (Health/Check), 4 connections: callers' CPU per call (us)" "$(or_na "$floor_callers")"
printf '%-66s %10s\n' "floor (Health/Check): 64 connections' rate over 4 connections'" "$(or_na "$floor_share")"
printf '%-66s %10s\n' "EditMessage, 64 clients, one message each (/s)" "$(or_na "$edit")"
printf '%-66s %10s\n' "DeleteMessage, 64 clients (/s)" "$(or_na "$delete")"
printf '%-66s %10s\n' "reference: 1 tx + NOTIFY per message, $naive_clients clients (msg/s)" "$(or_na "$naive")"
printf '%-66s %10s\n' "reference: 32 rows/tx + 1 NOTIFY, best of 2-8 clients (rows/s)" "$(or_na "$batched")"
printf '%-66s %10s\n' "RedeemToken end to end, best of $callers callers (/s)" "$(or_na "$redeem")"
printf '%-66s %10s\n' "delivery p99, stream on another replica, 1 at a time (ms)" "$(or_na "$quiet_p99")"
printf '%-66s %10s\n' "delivery p50 under load: 1,000 streams, sends at 50% of max (ms)" "$(or_na "$loaded_p50")"
printf '%-66s %10s\n' "delivery p99 under load: 1,000 streams, sends at 50% of max (ms)" "$(or_na "$delivery_p99")"
printf '%-66s %10s\n' "event feed: message events received by one consumer (/s)" "$(or_na "$feed_per_s")"
printf '%-66s %10s\n' "event feed: created -> received, p99 (ms)" "$(or_na "$feed_p99")"
printf '%-66s %10s\n' "idle StreamConversation, $streams streams (KiB each)" "$(or_na "$idle_kib")"
printf '%-66s %10s\n' "reads of messages per message, 10 viewers each" "$(or_na "$reads")"
echo "RESULT send_per_s=$(or_na "$send") naive_ref_per_s=$(or_na "$naive") batched_ref_rows_per_s=$(or_na "$batched") redeem_per_s=$(or_na "$redeem") delivery_p99_ms=$(or_na "$delivery_p99") idle_stream_kib=$(or_na "$idle_kib") reads_per_delivery=$(or_na "$reads") edit_per_s=$(or_na "$edit") delete_per_s=$(or_na "$delete") feed_events_per_s=$(or_na "$feed_per_s") feed_lag_p99_ms=$(or_na "$feed_p99") send_4conn_process_per_s=$(or_na "$proc4") send_64conn_per_s=$(or_na "$conn64") cpu_us_per_msg_service=$(or_na "$cpu_service") cpu_us_per_msg_postgres=$(or_na "$cpu_postgres") floor_us_per_call_service=$(or_na "$floor_service") floor_us_per_call_callers=$(or_na "$floor_callers") floor_64conn_share=$(or_na "$floor_share")"
