-- The certificate each login was made with (decimal serial): revoking that certificate
-- ends the links and sessions it made, within a request (the MP's revoked set).
ALTER TABLE console_links ADD COLUMN serial TEXT NOT NULL DEFAULT '';
ALTER TABLE console_sessions ADD COLUMN serial TEXT NOT NULL DEFAULT '';
