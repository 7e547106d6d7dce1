-- SendMessage writes a batch planned on conversation rows read without a lock in one
-- statement (no BEGIN and COMMIT round trips). The statement takes the row locks itself
-- and, when any row changed since it was read, fails as a whole with this error; the
-- batch is then planned again under the locks.
CREATE FUNCTION chat_send_conflict() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a conversation changed since the batch was planned'
        USING ERRCODE = 'CH001';
END $$;
