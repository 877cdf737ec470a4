-- mailsync schema v5: Gmail messages Gmail keeps refusing to serve (messages.get answers 4xx, e.g.
-- failedPrecondition, after the retries). They are not in the mirror; every pass asks for them
-- again, and a message served or deleted since leaves this table.

CREATE TABLE gmail_refused (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    gmail_id        text NOT NULL,
    reason          text NOT NULL,          -- Gmail's answer, e.g. "messages.get: HTTP 400 failedPrecondition"
    attempts        integer NOT NULL DEFAULT 1,
    first_refused   timestamptz NOT NULL DEFAULT now(),
    last_refused    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, gmail_id)
);
