-- mailsync schema v6: scratch space of a Gmail reconcile (resync). The ids Gmail lists, all of them
-- (scope '') and per label (scope = label id), are staged page by page, so an attempt cut short
-- resumes at its last page instead of listing a huge mailbox again. Rows belong to one reconcile
-- (`run`): an attempt that outlives its timeout cannot disturb the next one's view. A reconcile
-- removes its rows when it ends; rows of runs abandoned long ago are removed by the next one.

CREATE TABLE gmail_listing (
    account_id      text NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    run             text NOT NULL,
    scope           text NOT NULL,
    gmail_id        text NOT NULL,
    staged_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, run, scope, gmail_id)
);
