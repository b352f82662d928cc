-- A token's uses left, split over shards: the concurrent transactions that record
-- certificates (one per connection, each on its own shard) spend the uses of one bulk
-- token without waiting for each other's commit on one row. A shard never goes below
-- zero, so the sum never exceeds what is left. enrollment_tokens.uses_left keeps the
-- count the token had when it moved here and is no longer written.
CREATE TABLE enrollment_token_shards (
    token_id  TEXT NOT NULL REFERENCES enrollment_tokens (id),
    shard     INTEGER NOT NULL,
    uses_left INTEGER NOT NULL CHECK (uses_left >= 0),
    PRIMARY KEY (token_id, shard)
);

INSERT INTO enrollment_token_shards (token_id, shard, uses_left)
    SELECT id, 0, uses_left FROM enrollment_tokens;
