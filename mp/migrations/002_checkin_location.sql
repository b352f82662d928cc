-- Check-in records the location of the listener a device came in on (last_location, since
-- 001) and keeps what the agent claimed beside it: a mismatch is flagged, never trusted.
ALTER TABLE devices ADD COLUMN claimed_location TEXT NOT NULL DEFAULT '';
