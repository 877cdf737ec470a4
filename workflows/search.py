"""Search attributes of the account workflow, so the Temporal web UI and `temporal workflow list`
can filter accounts (e.g. `MailsyncPhase = 'auth_failed'`).

They must exist on the server before a workflow sets them: `mailsync dev up` registers them with
the dev server; on a real cluster run `temporal operator search-attribute create` once (README).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

ACCOUNT_ID = SearchAttributeKey.for_keyword("MailsyncAccountId")
ADDRESS = SearchAttributeKey.for_keyword("MailsyncAddress")
PROVIDER = SearchAttributeKey.for_keyword("MailsyncProvider")
PHASE = SearchAttributeKey.for_keyword("MailsyncPhase")

ALL = (ACCOUNT_ID, ADDRESS, PROVIDER, PHASE)
