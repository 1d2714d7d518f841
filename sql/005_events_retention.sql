-- Retention (RECO_EVENTS_RETENTION_DAYS, reco/events_retention.py) may delete the events
-- older than the cutoff its transaction declares in `reco.retention_cutoff`; nothing else may
-- change the log, and retention no younger row: corrections are still new events, never edits.
CREATE OR REPLACE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    cutoff text := current_setting('reco.retention_cutoff', true);
BEGIN
    IF TG_OP = 'DELETE' AND coalesce(cutoff, '') <> ''
            AND OLD.event_time < cutoff::timestamptz THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP;
END;
$$;
