-- The PostgreSQL part of scripts/load-big.sh: years of chat for a freshly migrated
-- database, in SQL. psql runs it (it uses psql variables and meta-commands):
--
--   psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q -d DB -v conversations=N \
--        -f scripts/load-big.sql
--
-- N conversations with 10 messages each, in the shape scripts/load-big.sh describes, then
-- VACUUM ANALYZE. Also loaded by the plan test (conversation-service/tests/api/plans.rs),
-- at a small N, so what it checks is what the big load gives.
SET synchronous_commit = off;
SET maintenance_work_mem = '512MB';
-- h(text): a stable pseudo-random number in [0, 2^31) from a name, so every load is the same.
CREATE FUNCTION pg_temp.h(t text) RETURNS bigint LANGUAGE sql IMMUTABLE
    RETURN hashtext(t)::bigint & 2147483647;
-- The writing transactions (xid) of the loaded messages and conversation events: spread
-- in commit order over ids that ended before the load began, as years of sends spread
-- over many transactions, not all in the load's one. The event feed's queries probe
-- `xid` by value; with one id in the statistics PostgreSQL expects a probe to match
-- every row and scans the table instead. Ids below this snapshot's xmin are complete,
-- so no snapshot taken later lists them as in progress.
SELECT top, greatest(1, least(top - 3, :conversations::bigint * 10)) AS span
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS top) t \gset xid_
-- The secondary indexes of conversations and messages are built once after the load, in
-- bulk, rather than entry by entry during millions of inserts. Every index that enforces
-- nothing (not unique, not a primary key, backing no constraint) is deferred, by the
-- definition the migrations gave it, so an index a later migration adds is deferred too
-- and comes back exactly as migrated. Unique indexes stay: they check the load.
CREATE TEMP TABLE deferred_indexes AS
SELECT x.indexname, x.indexdef
  FROM pg_indexes x
  JOIN pg_index i ON i.indexrelid = format('%I.%I', x.schemaname, x.indexname)::regclass
 WHERE x.schemaname = current_schema()
   AND x.tablename IN ('conversations', 'messages')
   AND NOT i.indisunique AND NOT i.indisprimary
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
 ORDER BY x.indexname;
SELECT format('DROP INDEX %I', indexname) FROM deferred_indexes \gexec

INSERT INTO conversations (id, request_id, provider_id, customer_id, customer_name,
                           customer_email, customer_phone, status, origin, head_seq,
                           provider_read_seq, customer_read_seq, created_at,
                           last_activity_at, inbox_at, session_id)
SELECT md5('conversation-' || i)::uuid,
       md5('request-' || i)::uuid,
       CASE WHEN i % 10 = 0 THEN 'prov-burst' ELSE 'prov-' || (i % 10000) END,
       CASE WHEN i % 5 <> 1 THEN 'cust-' || i END,
       CASE WHEN i % 5 <> 1 THEN (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + i % 8]
                                 || ' ' || (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson'])[1 + (i / 8) % 8]
                                 || ' ' || i ELSE '' END,
       CASE WHEN i % 5 <> 1 THEN 'customer' || i || '@example.com' ELSE '' END,
       CASE WHEN i % 5 <> 1 THEN '+44 20 ' || lpad((i % 100000000)::text, 8, '0') ELSE '' END,
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

INSERT INTO messages (conversation_id, seq, id, sender_role, sender_id, body, created_at, pos,
                      xid)
SELECT c.id, s, md5('message-' || c.id || '-' || s)::uuid,
       CASE WHEN s % 2 = 0 THEN 1 ELSE 2 END,
       CASE WHEN s % 2 = 0 THEN c.provider_id ELSE coalesce(c.customer_id, '') END,
       (ARRAY['Hello','Hi','Thanks','Sure','Great','Sorry','Okay','Morning'])[1 + pg_temp.h(c.id || 'a' || s) % 8]
         || ', ' || (ARRAY['the leak','my kitchen sink','the boiler','a quote','the invoice','your visit','the garden','the roof'])[1 + pg_temp.h(c.id || 'b' || s) % 8]
         || ' ' || (ARRAY['is fixed','needs a look','can wait until Monday','costs 120 pounds','was paid','is at 3 pm','looks fine','is dripping again'])[1 + pg_temp.h(c.id || 'c' || s) % 8]
         || '. Reference ' || pg_temp.h(c.id || 'd' || s) % 100000 || '.',
       c.last_activity_at - (10 - s) * interval '1 hour',
       c.n * 10 + s,
       (:xid_top - 1 - ((:conversations::bigint * 10 + 10 - (c.n * 10 + s)) * (:xid_span - 1))
                       / (:conversations::bigint * 10 + 10))::text::xid8
  FROM (SELECT id, provider_id, customer_id, last_activity_at,
               row_number() OVER (ORDER BY last_activity_at) AS n
          FROM conversations) AS c,
       generate_series(1, 10) AS s;

INSERT INTO conversation_events (conversation_id, kind, status, created_at, pos, xid)
SELECT id, 1, NULL, created_at, n,
       (:xid_top - 1 - ((:conversations::bigint - n) * (:xid_span - 1)) / :conversations::bigint)::text::xid8
  FROM (SELECT id, created_at, row_number() OVER (ORDER BY created_at) AS n FROM conversations) e;
-- The deferred indexes, each built in one pass over the loaded table.
SELECT indexdef FROM deferred_indexes \gexec
-- The event feed starts after the loaded history, as it starts at its migration on a
-- database that has history (and as EVENT_RETENTION would have pruned years of it):
-- else its first window would hold every loaded row, which a ListEvents from the oldest
-- and the first unread-reminder scan would read in one statement.
UPDATE feed_state SET assigned = pg_current_snapshot();
-- New writes draw inbox positions after everything loaded.
SELECT setval('inbox_pos_seq', (SELECT max(pos) + 1 FROM messages));
VACUUM ANALYZE conversations;
VACUUM ANALYZE messages;
VACUUM ANALYZE conversation_events;
