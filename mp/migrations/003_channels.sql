-- When each notification channel opened, in unix nanoseconds: the per-device cap closes
-- the oldest channels first, and several open within one second.
ALTER TABLE notify_connections ADD COLUMN opened_ns BIGINT NOT NULL DEFAULT 0;
