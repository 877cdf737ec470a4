"""A local, faithful Gmail REST API v1 server for tests, the demo and benchmarks.

    with GmailFake.start() as fake:
        fake.add_user("dana@example.com", refresh_token="rt-dana")
        fake.seed("dana@example.com", 200)
        service = build_gmail_service(fake, user_credentials(fake, "dana@example.com"))
        service.users().messages().list(userId="me").execute()

Modules: `server` (GmailFake, the uvicorn thread and Python API), `app`
(HTTP routes), `state` (mailboxes, history), `listing` (list/paging),
`views` (resource rendering), `mime` (payload, snippet), `query` (`q`),
`quota` (unit costs, rate limits, counters), `auth` (OAuth tokens),
`batch` (multipart batch format), `push` (watch notifications), `seed`
(corpus seeding), `client` (google-api-python-client helpers).
"""

from devkit.gmail_fake.client import build_gmail_service, discovery_document, new_batch_request, user_credentials
from devkit.gmail_fake.quota import METHOD_COSTS, QuotaStats
from devkit.gmail_fake.server import GmailFake

__all__ = [
    "METHOD_COSTS",
    "GmailFake",
    "QuotaStats",
    "build_gmail_service",
    "discovery_document",
    "new_batch_request",
    "user_credentials",
]
