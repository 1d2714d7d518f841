-- What the archiver applied of each partition (streaming/applied_positions.py): the offset after
-- the last record archived and the newest record timestamp among them. Each batch's transaction
-- locks its partitions' rows first and moves them on with its writes, so a second copy of the
-- archiver (one expelled from the group mid-batch, still writing) waits for the first and then
-- skips what it applied: it cannot bring back the events of a user erased meanwhile. A restore
-- from a backup takes the positions back with the events they describe.
CREATE TABLE archived_positions (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset     bigint,  -- NULL: none yet (the row only holds the lock)
    newest_ms       bigint,
    PRIMARY KEY (topic, kafka_partition)
);
