-- ListConversations' customer_query: a case-insensitive substring of the customer's name,
-- email or phone. A trigram GIN index serves `ILIKE '%text%'` for text of 3 characters or
-- more. None of these columns is written by SendMessage, so its updates stay HOT.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The searched text: the expression here and the query's must be the same.
CREATE FUNCTION chat_customer_text(name text, email text, phone text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN name || ' ' || email || ' ' || phone;

CREATE INDEX conversations_customer_text_idx ON conversations
    USING gin (chat_customer_text(customer_name, customer_email, customer_phone) gin_trgm_ops);
