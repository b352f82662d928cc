-- Why the direct connection lost when a session the helper could have reached directly went
-- over the relay: closed (refused), timeout (no answer), failed (anything else); '' when it
-- did not apply or direct won. The helper's relay leg tells it (?direct=).
ALTER TABLE sessions ADD COLUMN direct_error TEXT NOT NULL DEFAULT '';
