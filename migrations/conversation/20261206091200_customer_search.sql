-- ListConversations' customer_query: a case-insensitive substring of the customer's name,
-- email or phone. A trigram GIN index serves `ILIKE '%text%'` for text of 3 characters or
-- more; with the provider in the same index (btree_gin), a provider's search intersects
-- both keys instead of testing every match of every provider. A customer's own list is
-- short and is read in its order. None of these columns is written by SendMessage, so its
-- updates stay HOT. Both extensions are in PostgreSQL's contrib.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;

-- The searched text: the expression here and the query's must be the same.
CREATE FUNCTION chat_customer_text(name text, email text, phone text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN name || ' ' || email || ' ' || phone;

CREATE INDEX conversations_provider_customer_text_idx ON conversations
    USING gin (provider_id,
               chat_customer_text(customer_name, customer_email, customer_phone) gin_trgm_ops);
-- Statistics for the expression, so the planner can weigh a search against the order.
ANALYZE conversations;
