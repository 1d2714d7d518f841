-- Catalogue, users, the append-only event log and published models.

CREATE TABLE items (
    item_id     text PRIMARY KEY,
    title       text,
    category    text,
    price       numeric(12, 2) CHECK (price IS NULL OR price >= 0),
    in_stock    boolean NOT NULL DEFAULT true,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX items_category_idx ON items (category);

CREATE TABLE users (
    user_id     text PRIMARY KEY,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    event_id    uuid PRIMARY KEY,
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    event_type  text NOT NULL CHECK (event_type IN ('view', 'click', 'cart', 'purchase')),
    event_time  timestamptz NOT NULL,
    session_id  text,
    context     jsonb,
    -- where the archiver read it from: lets anyone audit at-least-once delivery
    kafka_partition integer,
    kafka_offset    bigint,
    archived_at timestamptz NOT NULL DEFAULT now()
);
-- Time-window reads (training extracts) and per-user histories.
CREATE INDEX events_event_time_idx ON events (event_time);
CREATE INDEX events_user_time_idx ON events (user_id, event_time);

-- The log is append-only: corrections are new events, never edits.
CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP;
END;
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();

CREATE TABLE models (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    version       text NOT NULL,
    mlflow_run_id text,
    metrics       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status        text NOT NULL DEFAULT 'trained'
                  CHECK (status IN ('trained', 'champion', 'rejected', 'published', 'retired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    UNIQUE (name, version)
);
