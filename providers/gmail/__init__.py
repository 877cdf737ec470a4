"""Gmail provider: an async session on the Gmail REST API (google-api-python-client), no Temporal here.

    creds = load_credentials_file("authorized_user.json")
    async with GmailSession(creds, bucket=TokenBucket.for_quota(250)) as gmail:
        email, history_id, total = await gmail.profile()
        ids, token = await gmail.list_thread_ids(q="after:1700000000")
        threads = await gmail.get_threads_minimal(ids)
        fetched = await gmail.get_raw_messages([m for t in threads.values() for m in t])

Modules: `credentials` (GmailCredentials, credentials files), `session`
(GmailSession), `models` (what it returns), `errors` (Gmail error classes
and `classify`), `quota` (unit costs, QuotaBucket, TokenBucket).
"""

from providers.gmail.credentials import (
    GMAIL_READONLY,
    GOOGLE_TOKEN_URI,
    GmailCredentials,
    load_credentials_file,
    parse_credentials,
)
from providers.gmail.errors import (
    AccessDenied,
    AuthExpired,
    GmailServerError,
    HistoryExpired,
    NotFound,
    RateLimited,
    RequestRejected,
    classify,
)
from providers.gmail.models import (
    GmailLabel,
    GmailMessage,
    GmailProfile,
    HistoryChange,
    HistoryPage,
    LabelsAdded,
    LabelsRemoved,
    MessageAdded,
    MessageDeleted,
    RawFetchResult,
    WatchResult,
)
from providers.gmail.quota import METHOD_COSTS, QuotaBucket, TokenBucket, batch_cost
from providers.gmail.session import GOOGLE_API_ENDPOINT, MAX_BATCH_PARTS, GmailSession

__all__ = [
    "GMAIL_READONLY",
    "GOOGLE_API_ENDPOINT",
    "GOOGLE_TOKEN_URI",
    "MAX_BATCH_PARTS",
    "METHOD_COSTS",
    "AccessDenied",
    "AuthExpired",
    "GmailCredentials",
    "GmailLabel",
    "GmailMessage",
    "GmailProfile",
    "GmailServerError",
    "GmailSession",
    "HistoryChange",
    "HistoryExpired",
    "HistoryPage",
    "LabelsAdded",
    "LabelsRemoved",
    "MessageAdded",
    "MessageDeleted",
    "NotFound",
    "QuotaBucket",
    "RateLimited",
    "RawFetchResult",
    "RequestRejected",
    "TokenBucket",
    "WatchResult",
    "batch_cost",
    "classify",
    "load_credentials_file",
    "parse_credentials",
]
