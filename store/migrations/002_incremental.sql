-- mailsync schema v2: what incremental sync needs.
-- A message whose last location disappeared (expunged, folder deleted) is kept and marked, never
-- silently dropped from history; it is revived if it shows up in a folder again.
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;
-- A folder deleted on the server keeps its row (its name and history) with its locations removed.
ALTER TABLE folders ADD COLUMN deleted_at timestamptz;

-- One row per incremental pass (folder NULL) and one per folder that changed in it.
CREATE TABLE sync_history (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder          text,
    kind            text NOT NULL,          -- initial, incremental, resync, rebuild
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    new_messages    integer NOT NULL DEFAULT 0,
    updated         integer NOT NULL DEFAULT 0,
    expunged        integer NOT NULL DEFAULT 0,
    error           text
);
CREATE INDEX sync_history_account ON sync_history (account_id, started_at DESC);
