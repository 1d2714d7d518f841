-- DELETE /items/{id} keeps the row as a tombstone: deleted_at set, and a new revision taken
-- under the row lock like every other write of the item. The Redis mirror then orders a delete
-- against upserts by revision (an older upsert landing late cannot bring the item back), a
-- later PUT of the id takes the row back with a newer revision, and the full mirror
-- (`reco db mirror-items`) finds the deleted items to remove from Redis. Every reader of the
-- catalogue takes `deleted_at IS NULL` rows only.
ALTER TABLE items ADD COLUMN deleted_at timestamptz;
