-- Sessions of the web console (issue #12): the MP itself is the helper's end of the
-- end-to-end TLS, so such a session is audited with e2e = 0 whatever the device reports.
-- The ticket of such a leg is the console's: only DialSession, for its user, may use it.
ALTER TABLE sessions ADD COLUMN console INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_tickets ADD COLUMN console INTEGER NOT NULL DEFAULT 0;
