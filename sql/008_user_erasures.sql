-- User erasures (reco/erasure.py): the archiver deletes a user's events and `users` row when it
-- reads the erasure from the topic, and records it here. The audit row names the user only by
-- its keyed pseudonym (RECO_LOG_PSEUDONYM_KEY, as logs do), so it does not keep the id it erased.
CREATE TABLE user_erasures (
    erasure_id      uuid PRIMARY KEY,
    user_pseudonym  text NOT NULL,
    requested_at    timestamptz NOT NULL,
    erased_at       timestamptz NOT NULL DEFAULT now(),
    events_deleted  bigint NOT NULL,
    -- where the archiver read it: a redelivery is told from a copy sent again with its id
    kafka_partition integer,
    kafka_offset    bigint
);
CREATE INDEX user_erasures_pseudonym_idx ON user_erasures (user_pseudonym);

-- The append-only trigger also lets a transaction delete the events of the users it declares
-- in `reco.erase_users` (space-separated: ids hold no spaces), and only theirs.
CREATE OR REPLACE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cutoff text := current_setting('reco.retention_cutoff', true);
    erasing text := current_setting('reco.erase_users', true);
BEGIN
    IF TG_OP = 'DELETE' AND coalesce(cutoff, '') <> ''
            AND OLD.event_time < cutoff::timestamptz THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'DELETE' AND coalesce(erasing, '') <> ''
            AND OLD.user_id = ANY(string_to_array(erasing, ' ')) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP;
END;
$$;
