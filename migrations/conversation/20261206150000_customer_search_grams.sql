-- ListConversations' customer_query for a big provider, with keys of its own. The index of
-- 20261206091200 held the provider and pg_trgm's trigrams as two keys of one GIN index, so
-- a search read the posting list of every trigram of the text across every provider and
-- intersected them. A text whose trigrams every customer shares (`customer1234` in
-- `customer…@example.com`) read about a million entries per trigram to find a hundred
-- rows, 24 ms at a million conversations, whatever the provider's size.
--
-- Here each key is one provider's three-character window of the customer text: the
-- provider's conversations that hold it are one posting list, as long as that provider's
-- matches and no longer. The windows are of the lowercased text, all of them, across
-- words and punctuation, so a text that holds the query holds each of the query's windows
-- (a query has at least 3 characters, so at least one). The key is 31 bits of
-- `hashtextextended(window, hashtext(provider))`: the hash that places rows in
-- hash-partitioned tables, which an upgrade in place leaves where they are. A collision only adds a
-- candidate, and every candidate is tested with the ILIKE that decides. A text's repeated
-- windows are left in: GIN stores each key of a row once. A customer's own list is short
-- and is read in its order, as before.
CREATE FUNCTION chat_grams(owner text, t text) RETURNS int4[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY(SELECT (hashtextextended(substr(l, i, 3), seed) & 2147483647)::int4
                   FROM hashtext(owner) AS seed, lower(t) AS l,
                        generate_series(1, char_length(l) - 2) AS i);

-- Built in the migration's transaction, as 20261206140000 explains: writes to
-- conversations wait until it is built (106 s for a million conversations here, 2 cores); a
-- database too large for that pause can have it built beforehand, CONCURRENTLY and under
-- this name, and this migration then only checks it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
                WHERE indexrelid = to_regclass('conversations_customer_grams_idx')
                  AND NOT indisvalid) THEN
        RAISE EXCEPTION 'conversations_customer_grams_idx exists but is invalid (a failed CREATE INDEX CONCURRENTLY): drop it and build it again, or let this migration build it';
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS conversations_customer_grams_idx ON conversations
    USING gin (chat_grams(provider_id,
                          chat_customer_text(customer_name, customer_email, customer_phone)));
DROP INDEX conversations_provider_customer_text_idx;
ANALYZE conversations;
