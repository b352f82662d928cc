-- A session's kind (issue #12): '' for a terminal, 'screen' for a screen session (RFB).
-- A viewer's leg on join is signed with the session's kind, so the device bridges a
-- joined viewer to the screen.
ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT '';
