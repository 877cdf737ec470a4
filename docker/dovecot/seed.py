"""Write the project's sample mailbox (devkit.corpus) as a Maildir++ tree that Dovecot can serve.

Used by docker/dovecot/Dockerfile at image build time (`python seed.py /out/demo`) and by the
tests. Needs only the standard library plus `devkit/corpus.py`.

Layout written under TARGET (the user's mail_location, `maildir:/srv/mail/%u`):

    TARGET/{cur,new,tmp}/                   INBOX
    TARGET/.Sent/{cur,new,tmp}/             folder "Sent"
    TARGET/.Archive.2023/{cur,new,tmp}/     folder "Archive/2023" (namespace separator "/")
    TARGET/.<folder>/maildirfolder          Maildir++ marker
    TARGET[/.<folder>]/dovecot-keywords     only when messages carry IMAP keywords
    TARGET/subscriptions                    every folder (Dovecot's "V\\t2" format)

Every message lands in `cur/` (not `new/`, so none is \\Recent) as
`<n>.M<n>P0.mailsync-seed,S=<bytes>:2,<flag letters>`. Dovecot gives UIDs to new files in
file-name order, so the names are built to sort in generator order: UID n in a folder is the
n-th message the generator yielded for it. The file's mtime is the message's INTERNALDATE
(Dovecot's maildir backend reads the received date from it). The bytes are written exactly as
generated (bare LF, CRLF, NULs alike), so S= is the physical size.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Maildir "info" letters for IMAP system flags; the letters must appear in ASCII order.
SYSTEM_FLAG_LETTERS = {
    "\\draft": "D",
    "\\flagged": "F",
    "\\answered": "R",
    "\\seen": "S",
    "\\deleted": "T",
}
# Session-only flag: cannot be stored.
IGNORED_FLAGS = {"\\recent"}
# Dovecot maps IMAP keywords to the lowercase letters a..z via `dovecot-keywords`.
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Mailbox hierarchy separator of the IMAP namespace (dovecot.conf `separator = /`).
NAMESPACE_SEPARATOR = "/"
# Maildir++ on-disk hierarchy separator.
MAILDIRPP_SEPARATOR = "."
# Base of the synthetic file names: 10 digits, so names sort numerically as strings.
NAME_BASE = 1_000_000_000


def imap_utf7_encode(name: str) -> str:
    """Encode a mailbox name in IMAP modified UTF-7 (RFC 3501 5.1.3), as Dovecot stores it on disk."""
    import base64

    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def is_inbox(folder: str) -> bool:
    return folder.upper() == "INBOX"


def folder_dir(root: Path, folder: str) -> Path:
    """The Maildir++ directory of an IMAP folder name ("INBOX" is the root itself)."""
    if is_inbox(folder):
        return root
    parts = folder.split(NAMESPACE_SEPARATOR)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in folder):
        raise ValueError(f"invalid folder name {folder!r}: control character")
    if any(not part for part in parts):
        raise ValueError(f"invalid folder name {folder!r}: empty hierarchy level")
    for part in parts:
        if MAILDIRPP_SEPARATOR in part:
            raise ValueError(
                f"folder {folder!r}: '.' is Maildir++'s hierarchy separator and cannot appear in a "
                f"name level (use {NAMESPACE_SEPARATOR!r} for hierarchy)"
            )
    return root / (MAILDIRPP_SEPARATOR + MAILDIRPP_SEPARATOR.join(imap_utf7_encode(p) for p in parts))


def subscription_line(folder: str) -> str:
    """A folder's line in Dovecot's version-2 `subscriptions` file."""
    if is_inbox(folder):
        return "INBOX"
    return "\t".join(imap_utf7_encode(part) for part in folder.split(NAMESPACE_SEPARATOR))


def make_maildir(path: Path, *, subfolder: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    if subfolder:
        (path / "maildirfolder").touch()


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def timestamp_ns(value: datetime) -> int:
    """Exact nanoseconds since the epoch (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


class _Folder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.keywords: list[str] = []  # index = letter position

    def info_letters(self, flags: Iterable[str]) -> str:
        letters: set[str] = set()
        for flag in flags:
            low = flag.lower()
            if low in SYSTEM_FLAG_LETTERS:
                letters.add(SYSTEM_FLAG_LETTERS[low])
            elif low in IGNORED_FLAGS:
                continue
            elif flag.startswith("\\"):
                raise ValueError(f"unknown IMAP system flag {flag!r}")
            else:
                if any(c in flag for c in " ()[]{}%*\"\\") or not flag:
                    raise ValueError(f"invalid IMAP keyword {flag!r}")
                if flag not in self.keywords:
                    if len(self.keywords) == len(KEYWORD_LETTERS):
                        raise ValueError(f"{self.path}: more than 26 distinct keywords in one folder")
                    self.keywords.append(flag)
                letters.add(KEYWORD_LETTERS[self.keywords.index(flag)])
        # System letters (uppercase) sort before keyword letters (lowercase), as Maildir requires.
        return "".join(sorted(letters))


def write_maildir(messages: Iterable[Any], target: str | os.PathLike[str]) -> dict[str, int]:
    """Write messages (objects with .folder, .raw, .flags, .internaldate) as a Maildir++ tree.

    Returns {folder name: message count}, INBOX always included. TARGET must be absent or empty:
    seeding twice would duplicate every message.
    """
    root = Path(target)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; refusing to seed a second copy")
    make_maildir(root, subfolder=False)

    folders: dict[str, _Folder] = {"INBOX": _Folder(root)}
    for msg in messages:
        name = "INBOX" if is_inbox(msg.folder) else msg.folder
        folder = folders.get(name)
        if folder is None:
            path = folder_dir(root, name)
            make_maildir(path, subfolder=True)
            folder = folders[name] = _Folder(path)
        raw = bytes(msg.raw)
        letters = folder.info_letters(msg.flags)
        folder.count += 1
        n = folder.count
        base = f"{NAME_BASE + n}.M{n}P0.mailsync-seed,S={len(raw)}"
        tmp = folder.path / "tmp" / base
        tmp.write_bytes(raw)
        ts = timestamp_ns(msg.internaldate)
        os.utime(tmp, ns=(ts, ts))
        os.rename(tmp, folder.path / "cur" / f"{base}:2,{letters}")

    for folder in folders.values():
        if folder.keywords:
            (folder.path / "dovecot-keywords").write_text(
                "".join(f"{i} {kw}\n" for i, kw in enumerate(folder.keywords)), encoding="ascii"
            )
    # Dovecot 2.3's own subscriptions format ("V\t2", blank line, then one mailbox a line with
    # hierarchy levels separated by TAB, each level in modified UTF-7), as it writes it itself.
    lines = ["V\t2", ""] + [subscription_line(name) for name in folders]
    (root / "subscriptions").write_text("".join(f"{line}\n" for line in lines), encoding="ascii")
    return {name: folder.count for name, folder in folders.items()}


def main(target: str | os.PathLike[str] | None = None, *, seed: int = 0) -> dict[str, int]:
    """Seed TARGET with devkit.corpus.generate_sample_mailbox(seed). Without TARGET, read argv."""
    if target is None:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("target", help="Maildir root to create (must be absent or empty)")
        parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
        args = parser.parse_args()
        target, seed = args.target, args.seed

    # Run from the repository (tests, by hand) or from the image's seed stage, where devkit/
    # sits next to this file: make `devkit` importable either way.
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent.parent):
        if (candidate / "devkit" / "corpus.py").is_file():
            if str(candidate) not in sys.path:
                sys.path.insert(0, str(candidate))
            break
    from devkit.corpus import generate_sample_mailbox

    counts = write_maildir(generate_sample_mailbox(seed=seed), target)
    total = sum(counts.values())
    print(f"seeded {total} messages in {len(counts)} folders into {target}: "
          + ", ".join(f"{name}={n}" for name, n in counts.items()))
    return counts


if __name__ == "__main__":
    main()
