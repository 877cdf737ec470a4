-- mailsync schema v3: a body-free identity for stored messages. sha256 of the exact header block
-- plus the total size lets a rebuilt folder (new UIDVALIDITY, renamed folder, resync) match the
-- messages it already holds from `BODY.PEEK[HEADER] RFC822.SIZE` without downloading bodies again.
ALTER TABLE messages ADD COLUMN header_sha256 bytea;
CREATE INDEX messages_header_key ON messages (account_id, header_sha256) WHERE header_sha256 IS NOT NULL;
