-- mailsync schema v1: accounts, folders, messages stored once per account by sha256,
-- their locations (folder + UIDVALIDITY + UID), threads and contacts.

CREATE TABLE accounts (
    id              text PRIMARY KEY,
    provider        text NOT NULL CHECK (provider IN ('imap', 'gmail')),
    address         text NOT NULL,
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,   -- host, port, security, username: no secrets
    credentials     bytea,                                  -- AES-GCM sealed, see store/crypto.py
    status          text NOT NULL DEFAULT 'active',
    status_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE folders (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name            text NOT NULL,
    delimiter       text,
    role            text,               -- special-use: inbox, sent, drafts, trash, junk, archive, all, flagged
    attributes      text[] NOT NULL DEFAULT '{}',
    uidvalidity     bigint,
    uidnext         bigint,
    highestmodseq   bigint,
    message_count   integer,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, name)
);

CREATE TABLE threads (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    subject         text,
    message_count   integer NOT NULL DEFAULT 0,
    first_date      timestamptz,
    last_date       timestamptz
);
CREATE INDEX threads_account ON threads (account_id);

-- Every Message-ID a message mentions (its own, In-Reply-To, References) points at its thread:
-- threads are the connected components of that graph, so arrival order does not matter.
CREATE TABLE thread_refs (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    ref             text NOT NULL,
    thread_id       bigint NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
    PRIMARY KEY (account_id, ref)
);
CREATE INDEX thread_refs_thread ON thread_refs (thread_id);

CREATE TABLE messages (
    id              bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    sha256          bytea NOT NULL,
    size            integer NOT NULL,
    message_id      text,
    in_reply_to     text,
    refs            text[] NOT NULL DEFAULT '{}',
    subject         text,
    from_addr       text,
    from_name       text,
    to_addrs        text[] NOT NULL DEFAULT '{}',
    cc_addrs        text[] NOT NULL DEFAULT '{}',
    bcc_addrs       text[] NOT NULL DEFAULT '{}',
    sent_at         timestamptz,
    internaldate    timestamptz,
    snippet         text,
    thread_id       bigint REFERENCES threads(id) ON DELETE SET NULL,
    parse_error     text,               -- NULL when the message parsed cleanly
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, sha256)
);
CREATE INDEX messages_thread ON messages (thread_id);
CREATE INDEX messages_message_id ON messages (account_id, message_id);
CREATE INDEX messages_sent_at ON messages (account_id, sent_at DESC);

-- The exact RFC 822 bytes, once per account per sha256.
CREATE TABLE message_bodies (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    sha256          bytea NOT NULL,
    raw             bytea NOT NULL,
    PRIMARY KEY (account_id, sha256)
);
-- pglz compression of large bytea is the write bottleneck (DESIGN.md): store it uncompressed.
ALTER TABLE message_bodies ALTER COLUMN raw SET STORAGE EXTERNAL;

CREATE TABLE message_locations (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    folder_id       bigint NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
    uidvalidity     bigint NOT NULL,
    uid             bigint NOT NULL,
    message_pk      bigint NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    flags           text[] NOT NULL DEFAULT '{}',
    internaldate    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (folder_id, uidvalidity, uid)
);
CREATE INDEX message_locations_message ON message_locations (message_pk);

CREATE TABLE contacts (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    address         text NOT NULL,      -- normalized: lower-cased, trimmed
    display_name    text,
    message_count   integer NOT NULL DEFAULT 0,
    first_seen      timestamptz,
    last_seen       timestamptz,
    PRIMARY KEY (account_id, address)
);
