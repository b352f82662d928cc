-- The certificate each login was made with (decimal serial): revoking that certificate
-- ends the links and sessions it made, within a request (the MP's revoked set),
ALTER TABLE console_links ADD COLUMN serial TEXT NOT NULL DEFAULT '';
-- and when that certificate expires (unix seconds): a session ends then at the latest.
ALTER TABLE console_links ADD COLUMN cert_expires_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE console_sessions ADD COLUMN serial TEXT NOT NULL DEFAULT '';
