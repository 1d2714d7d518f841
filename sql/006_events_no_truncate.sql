-- The append-only trigger (sql/001, sql/005) is per row: TRUNCATE skipped it and emptied the log
-- at once. Refused too, unless the transaction declares `reco.allow_truncate` = 'on' (a test
-- database being reset; an operator who really means it).
CREATE FUNCTION events_reject_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('reco.allow_truncate', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'events is append-only: TRUNCATE is not allowed';
END;
$$;

CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_truncate();
