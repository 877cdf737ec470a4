"""Fill fake Gmail mailboxes from the deterministic corpus (`devkit.corpus`).

Corpus folders and IMAP flags become Gmail labels: INBOX gets INBOX and
CATEGORY_PERSONAL, Sent SENT, Drafts DRAFT, Archive nothing (archived mail
has no INBOX label), Spam/Junk SPAM, Trash TRASH, any other folder a user
label of the same name (mailing lists also get CATEGORY_FORUMS); a message
without \\Seen is UNREAD, \\Flagged is STARRED, \\Answered is IMPORTANT.
Threads come from the corpus's In-Reply-To/References, as Gmail threads.
The same arguments always give the same bytes, labels and dates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from devkit.corpus import SeedMessage, generate_corpus, reply_chain

if TYPE_CHECKING:
    from devkit.gmail_fake.server import GmailFake

__all__ = ["labels_for", "seed_mailbox", "seed_messages", "seed_reply_chain"]

_FOLDER_LABELS: dict[str, tuple[str, ...]] = {
    "inbox": ("INBOX", "CATEGORY_PERSONAL"),
    "sent": ("SENT",),
    "drafts": ("DRAFT",),
    "archive": (),
    "all mail": (),
    "spam": ("SPAM",),
    "junk": ("SPAM",),
    "trash": ("TRASH",),
}


def labels_for(fake: GmailFake, user: str, message: SeedMessage) -> list[str]:
    """Gmail label ids for a corpus message, creating user labels as needed."""
    folder = message.folder
    labels = list(_FOLDER_LABELS.get(folder.lower(), ()))
    if folder.lower() not in _FOLDER_LABELS:
        label_id = fake.label_id(user, folder) or fake.create_label(user, folder)
        labels.append(label_id)
        if folder.startswith("Lists/"):
            labels.append("CATEGORY_FORUMS")
    outgoing = "SENT" in labels or "DRAFT" in labels
    if "\\Seen" not in message.flags and not outgoing:
        labels.append("UNREAD")
    if "\\Flagged" in message.flags:
        labels.append("STARRED")
    if "\\Answered" in message.flags:
        labels.append("IMPORTANT")
    return labels


def seed_messages(fake: GmailFake, user: str, messages: Iterable[SeedMessage]) -> list[str]:
    """Add corpus messages in the given order; returns their Gmail ids."""
    return [
        fake.add_message(user, message.raw, labels_for(fake, user, message), internal_date=message.internaldate)
        for message in messages
    ]


def seed_mailbox(fake: GmailFake, user: str, n: int, *, seed: int = 0, **corpus_kwargs: Any) -> list[str]:
    """Add `n` messages of `generate_corpus(n, seed=seed, **corpus_kwargs)`; returns their ids, oldest first."""
    return seed_messages(fake, user, generate_corpus(n, seed=seed, **corpus_kwargs))


def seed_reply_chain(
    fake: GmailFake, user: str, n: int, *, seed: int = 0, subject: str = "Quarterly planning"
) -> list[str]:
    """`n` messages replying to each other (one thread), in INBOX, one minute apart."""
    ids = []
    base_ms = 1_700_000_000_000 + seed * 86_400_000
    for i, raw in enumerate(reply_chain(n, seed=seed, subject=subject)):
        ids.append(fake.add_message(user, raw, ("INBOX",), internal_date=base_ms + i * 60_000))
    return ids
