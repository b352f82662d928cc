-- A re-enroll token is bound to an existing device: the certificate it enrolls names that
-- device id, so the device keeps its id, groups and history. '' for every other token.
ALTER TABLE enrollment_tokens ADD COLUMN device_id TEXT NOT NULL DEFAULT '';
