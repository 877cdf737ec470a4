-- mailsync schema v4: Gmail accounts (through the Gmail API, not IMAP).
-- Messages, bodies, threads and contacts are the same tables as for IMAP; what Gmail adds is its
-- own message id (the location of a message, as folder+UIDVALIDITY+UID is for IMAP), its labels,
-- and its thread id, which *is* the thread (no Message-ID threading for Gmail accounts).

CREATE TABLE gmail_labels (
    account_id              text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    label_id                text NOT NULL,
    name                    text NOT NULL,
    type                    text NOT NULL,          -- system, user
    message_list_visibility text,
    label_list_visibility   text,
    background_color        text,
    text_color              text,
    messages_total          integer,
    messages_unread         integer,
    threads_total           integer,
    threads_unread          integer,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, label_id)
);

CREATE TABLE gmail_messages (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    gmail_id        text NOT NULL,
    gmail_thread_id text NOT NULL,
    message_pk      bigint NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    history_id      bigint,
    internaldate    timestamptz,
    deleted_at      timestamptz,        -- deleted in Gmail: kept, like an expunged IMAP message
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, gmail_id)
);
CREATE INDEX gmail_messages_message ON gmail_messages (message_pk);
CREATE INDEX gmail_messages_thread ON gmail_messages (account_id, gmail_thread_id);

-- message <-> label, one row per label a live message carries (no FK to gmail_labels: a change can
-- name a label created after the last label sync).
CREATE TABLE gmail_message_labels (
    account_id      text NOT NULL,
    gmail_id        text NOT NULL,
    label_id        text NOT NULL,
    PRIMARY KEY (account_id, gmail_id, label_id),
    FOREIGN KEY (account_id, gmail_id) REFERENCES gmail_messages (account_id, gmail_id) ON DELETE CASCADE
);
CREATE INDEX gmail_message_labels_label ON gmail_message_labels (account_id, label_id);

-- Provider thread ids (Gmail's threadId) map to one threads row each.
ALTER TABLE threads ADD COLUMN provider_thread_id text;
CREATE UNIQUE INDEX threads_provider_thread ON threads (account_id, provider_thread_id)
    WHERE provider_thread_id IS NOT NULL;
