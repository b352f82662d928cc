-- Status messages are read back newest last (ibcm device messages): time_ns keeps the
-- sub-second order of messages sent within one second (time, in seconds, stays what since
-- filters on; rows from before this migration have 0 and keep their second's order), and
-- the index serves one device's messages from a time on.
ALTER TABLE status_messages ADD COLUMN time_ns BIGINT NOT NULL DEFAULT 0;
CREATE INDEX status_messages_device_time ON status_messages (device_id, time);
