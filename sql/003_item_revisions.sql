-- Every upsert of an item takes the next revision, and the Redis mirror keeps the highest one
-- it was given: two ingest replicas' writes of one item landing out of order in Redis can no
-- longer leave the older copy there (PostgreSQL's row lock orders the revisions like the
-- commits).
CREATE SEQUENCE item_revision_seq;
ALTER TABLE items ADD COLUMN revision bigint NOT NULL DEFAULT nextval('item_revision_seq');
