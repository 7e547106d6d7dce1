-- GetUnreadSummary: per participant, the unread messages across its conversations and how
-- many conversations have any. Kept by the statements that move head_seq and the read
-- positions (SendMessage's batch, MarkRead, linking a customer), in the same transaction,
-- so it is exact and costs one row read at any size. Role 1 = provider, 2 = customer (by
-- customer_id; an anonymous visitor has none).
CREATE TABLE unread_counts (
    role                 smallint NOT NULL CHECK (role IN (1, 2)),
    participant_id       text     NOT NULL,
    unread_messages      bigint   NOT NULL DEFAULT 0,
    unread_conversations bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (role, participant_id)
);

INSERT INTO unread_counts (role, participant_id, unread_messages, unread_conversations)
SELECT 1, provider_id, sum(head_seq - provider_read_seq),
       count(*) FILTER (WHERE head_seq > provider_read_seq)
  FROM conversations WHERE head_seq > provider_read_seq
 GROUP BY provider_id;
INSERT INTO unread_counts (role, participant_id, unread_messages, unread_conversations)
SELECT 2, customer_id, sum(head_seq - customer_read_seq),
       count(*) FILTER (WHERE head_seq > customer_read_seq)
  FROM conversations WHERE customer_id IS NOT NULL AND head_seq > customer_read_seq
 GROUP BY customer_id;
