"""Private Dovecot 2.3 IMAP servers for tests, benchmarks and `make demo`.

`start_dovecot()` runs Debian's `dovecot` as root from a config file in its
own directory, listening on 127.0.0.1, so several servers can run side by
side and none clashes with a system-wide Dovecot. Users live in per-user
passwd-files and mail in Maildir++ homes under that directory; `seed()`
writes message files straight into a Maildir, which is orders of magnitude
faster than APPEND.

What a client sees is not always the seeded bytes: Dovecot serves a Maildir
message with bare LF line ends turned into CRLF, and `BODY[]` replaces NUL
bytes with 0x80 (`BINARY[]` keeps them). `imap_wire_bytes()` reproduces that
transformation so tests can compare exactly.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from devkit.corpus import SeedMessage

__all__ = [
    "DovecotNotInstalled",
    "DovecotServer",
    "SeedMessage",
    "find_dovecot",
    "imap_wire_bytes",
    "start_dovecot",
]

_INSTALL_HINT = "install with `apt-get install -y dovecot-imapd` (as root)"
_LIBEXEC_DIRS = ("/usr/lib/dovecot", "/usr/libexec/dovecot")

# Dovecot 2.3.19's built-in post-login capability string, used only when the
# `imap` binary cannot be read.
_FALLBACK_CAPABILITY = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE"
)

_SPECIAL_USE = (
    ("Drafts", "\\Drafts"),
    ("Sent", "\\Sent"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)

_MAILDIR_FLAGS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}

# Unix socket paths are limited to 108 bytes; Dovecot's longest socket name
# below base_dir is ~25 characters.
_MAX_RUNTIME_DIR_LEN = 80

_BARE_LF = re.compile(rb"(?<!\r)\n")


class DovecotNotInstalled(RuntimeError):
    """Dovecot's IMAP server is not installed on this machine."""

    def __init__(self, detail: str = "Dovecot IMAP server not found") -> None:
        super().__init__(f"{detail}; {_INSTALL_HINT}")


def find_dovecot() -> str:
    """Path of the `dovecot` master binary, checking PATH and /usr/sbin."""
    candidates = [shutil.which("dovecot"), "/usr/sbin/dovecot"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if _imap_binary() is None:
                # dovecot-core without dovecot-imapd: the master starts but serves nothing.
                raise DovecotNotInstalled(f"{candidate} exists but its imap service is missing")
            return candidate
    raise DovecotNotInstalled()


def _doveadm_binary() -> str:
    return shutil.which("doveadm") or "/usr/bin/doveadm"


def imap_wire_bytes(raw: bytes) -> bytes:
    """The bytes Dovecot returns for `BODY[]` of a Maildir message stored as `raw`."""
    return _BARE_LF.sub(b"\r\n", raw).replace(b"\x00", b"\x80")


def _imap_binary() -> str | None:
    for directory in _LIBEXEC_DIRS:
        path = os.path.join(directory, "imap")
        if os.path.isfile(path):
            return path
    return None


def _capability_without_condstore() -> str:
    # Read the compiled-in list instead of hard-coding one, so an older or
    # newer 2.3 build is never told to advertise something it lacks.
    base = _FALLBACK_CAPABILITY
    binary = _imap_binary()
    if binary is not None:
        data = Path(binary).read_bytes()
        start = data.find(b"IMAP4rev1 SASL-IR ")
        end = data.find(b"\x00", start) if start >= 0 else -1
        if end > start:
            base = data[start:end].decode("ascii", errors="replace")
    kept = [token for token in base.split() if token not in ("CONDSTORE", "QRESYNC")]
    # An explicit imap_capability is sent verbatim, without the LITERAL+,
    # NOTIFY and SPECIAL-USE Dovecot appends to its built-in list.
    return " ".join([*kept, "LITERAL+", "NOTIFY", "SPECIAL-USE"])


def _default_parent() -> str | None:
    # RAM-backed when possible: on disk-backed /tmp creating 20k Maildir files
    # took 4-10 s on the project's VMs, on tmpfs 0.3 s.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _encode_mutf7(name: str) -> str:
    """IMAP modified UTF-7 (RFC 3501 5.1.3), Dovecot's on-disk Maildir folder encoding."""
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


def _searchable_by(path: Path, uid: int, gid: int) -> Path | None:
    """First directory on the way to `path` that `uid` cannot traverse, if any."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return directory
    return None


def _check_name(kind: str, value: str, forbidden: str) -> None:
    if not value or any(c in value for c in forbidden) or any(ord(c) < 0x20 for c in value):
        raise ValueError(f"invalid {kind} {value!r}: must be non-empty without {forbidden!r} or control characters")


@dataclass(eq=False)
class DovecotServer:
    """A running private Dovecot; create it with `start_dovecot()`."""

    host: str
    port: int
    base_dir: Path
    _config: Path = field(repr=False)
    _runtime_dir: Path = field(repr=False)
    _uid: int = field(repr=False)
    _gid: int = field(repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _remove_base_dir: bool = field(default=False, repr=False)
    _remove_runtime_dir: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _sequence: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _log_after_stop: str | None = field(default=None, repr=False)

    # Users ---------------------------------------------------------------

    def _passwd_path(self, username: str) -> Path:
        return self.base_dir / "passwd.d" / username.lower()

    def _home(self, username: str) -> Path:
        return self.base_dir / "home" / username.lower()

    def add_user(self, username: str, password: str) -> None:
        """Create a user with an empty INBOX; works while the server runs.

        Usernames are case-insensitive (Dovecot lowercases them) and may not
        contain '/', ':' or whitespace; passwords may not contain ':'.
        """
        _check_name("username", username, "/: \t")
        if username in (".", ".."):
            raise ValueError(f"invalid username {username!r}")
        _check_name("password", password, ":")
        if self._passwd_path(username).exists():
            raise ValueError(f"user {username!r} already exists; use set_password()")
        maildir = self.maildir(username)
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for path in (self._home(username), maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            os.chown(path, self._uid, self._gid)
            path.chmod(0o700)
        # A passwd-file Dovecot has never seen is read on the first lookup,
        # so a new user can log in immediately.
        self._write_passwd(username, password)

    def set_password(self, username: str, password: str) -> None:
        """Change a user's password; returns once Dovecot will see the change."""
        _check_name("password", password, ":")
        if not self._passwd_path(username).exists():
            raise KeyError(f"no such user {username!r}")
        self._write_passwd(username, password)
        # Dovecot stats a passwd-file at most once per wall-clock second; after
        # the next second starts, the following login re-reads it.
        time.sleep(max(0.0, 1.0 - (time.time() % 1.0)) + 0.01)

    def _write_passwd(self, username: str, password: str) -> None:
        path = self._passwd_path(username)
        home = self._home(username)
        line = f"{username.lower()}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{home}::\n"
        previous_mtime = int(path.stat().st_mtime) if path.exists() else 0
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(line, encoding="utf-8")
        os.chown(tmp, 0, self._gid)
        tmp.chmod(0o640)
        # Dovecot reloads only when mtime (seconds) or size changed: a
        # same-length password written within the same second would be missed.
        mtime = max(int(time.time()), previous_mtime + 1)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)

    def maildir(self, username: str) -> Path:
        """Root of the user's Maildir++ (the INBOX)."""
        return self._home(username) / "Maildir"

    # Seeding -------------------------------------------------------------

    def seed(self, username: str, messages: Iterable[SeedMessage]) -> int:
        """Write messages straight into the user's Maildir; returns how many.

        Missing folders ("Lists/Python" -> ".Lists.Python") are created, and
        subscribed, through `doveadm` so that open sessions see them. Each
        file is written in tmp/ and renamed into cur/, so a running Dovecot
        never sees a partial file; its mtime is the message's internaldate
        (naive datetimes count as UTC). Flags other than system flags become
        keywords (at most 26 per folder, Maildir's limit). Safe while the
        server runs, as long as no client creates new keywords in the same
        folder at the same moment.
        """
        root = self.maildir(username)
        if not root.is_dir():
            raise KeyError(f"no such user {username!r}")
        uid, gid = self._uid, self._gid
        pid = os.getpid()
        folders: dict[str, tuple[Path, str, dict[str, str]]] = {}
        count = 0
        for message in messages:
            entry = folders.get(message.folder)
            if entry is None:
                path = self._prepare_folder(username, root, message.folder)
                entry = folders[message.folder] = (path, str(path), self._read_keywords(path))
            folder_path, folder_str, keywords = entry
            info = self._maildir_info(message.flags, keywords, folder_path)
            raw = message.raw
            when = message.internaldate
            stamp = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
            # Maildir unique name; S= lets Dovecot skip a stat() per message.
            name = f"{int(stamp)}.M{next(self._sequence)}P{pid}.mailsync,S={len(raw)}"
            tmp_path = f"{folder_str}/tmp/{name}"
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchown(fd, uid, gid)
                os.utime(fd, (stamp, stamp))
            finally:
                os.close(fd)
            os.rename(tmp_path, f"{folder_str}/cur/{name}:2,{info}")
            count += 1
        return count

    def _prepare_folder(self, username: str, root: Path, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return root
        parts = folder.split("/")
        for part in parts:
            if not part or "." in part or any(ord(c) < 0x20 for c in part):
                # Maildir++ uses '.' as its on-disk hierarchy separator.
                raise ValueError(f"invalid folder name {folder!r}")
        path = root / ("." + ".".join(_encode_mutf7(part) for part in parts))
        if not path.is_dir():
            # Created through Dovecot, not mkdir: a folder that appears behind
            # the mailbox list index's back stays invisible to LIST in sessions
            # that are already open. This also subscribes it.
            try:
                self.doveadm("mailbox", "create", "-s", "-u", username.lower(), folder)
            except RuntimeError:
                if not path.is_dir():  # lost a race with a client creating it is fine
                    raise
        return path

    @staticmethod
    def _read_keywords(folder_path: Path) -> dict[str, str]:
        keywords: dict[str, str] = {}
        try:
            text = (folder_path / "dovecot-keywords").read_text(encoding="utf-8")
        except FileNotFoundError:
            return keywords
        for line in text.splitlines():
            index, _, name = line.partition(" ")
            if index.isdigit() and int(index) < 26 and name:
                keywords[name] = chr(ord("a") + int(index))
        return keywords

    def _write_keywords(self, folder_path: Path, keywords: dict[str, str]) -> None:
        tmp = folder_path / f".dovecot-keywords.{secrets.token_hex(4)}"
        ordered = sorted(keywords.items(), key=lambda item: item[1])
        tmp.write_text("".join(f"{ord(letter) - ord('a')} {name}\n" for name, letter in ordered), encoding="utf-8")
        os.chown(tmp, self._uid, self._gid)
        os.replace(tmp, folder_path / "dovecot-keywords")

    def _maildir_info(self, flags: Iterable[str], keywords: dict[str, str], folder_path: Path) -> str:
        letters: set[str] = set()
        for flag in flags:
            if flag in _MAILDIR_FLAGS:
                letters.add(_MAILDIR_FLAGS[flag])
            elif flag == "\\Recent":
                continue  # session state, cannot be stored
            elif flag.startswith("\\"):
                raise ValueError(f"unknown system flag {flag!r}")
            else:
                letter = keywords.get(flag)
                if letter is None:
                    free = sorted(set("abcdefghijklmnopqrstuvwxyz") - set(keywords.values()))
                    if not free:
                        raise ValueError(f"more than 26 keywords in {folder_path}")
                    letter = keywords[flag] = free[0]
                    # The mapping must exist before any file carrying the letter
                    # does, or Dovecot would index that message without it.
                    self._write_keywords(folder_path, keywords)
                letters.add(letter)
        return "".join(sorted(letters))

    def doveadm(self, *args: str) -> str:
        """Run `doveadm` against this server (e.g. "expunge", "-u", user, ...); returns stdout."""
        result = subprocess.run(
            [_doveadm_binary(), "-c", str(self._config), *args], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # Lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Dovecot's log (and any early start-up errors) so far."""
        if self._log_after_stop is not None:
            return self._log_after_stop
        return self._read_logs()

    def _read_logs(self) -> str:
        chunks = []
        for name in ("dovecot.stderr", "dovecot.log"):
            try:
                chunks.append((self.base_dir / name).read_text(encoding="utf-8", errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(chunks)

    def stop(self) -> None:
        """Stop the server and all its processes; safe to call repeatedly."""
        with self._lock:
            process, self._process = self._process, None
            watchdog, self._watchdog = self._watchdog, None
        if process is None:
            return
        _LIVE.discard(self)
        if watchdog is not None:
            # Killed, not closed: closing its stdin would make it kill the group itself.
            watchdog.kill()
            watchdog.wait()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # The master was started as leader of its own process group; anything
        # left in that group (a login or imap process slow to notice) goes too.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        self._log_after_stop = self._read_logs()
        if self._remove_runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
        if self._remove_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_LIVE: set[DovecotServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _render_config(
    *,
    base_dir: Path,
    runtime_dir: Path,
    host: str,
    port: int,
    token: str,
    uid: int,
    gid: int,
    condstore: bool,
    extra_config: str,
) -> str:
    mailboxes = "\n".join(
        f"  mailbox {name} {{\n    special_use = {use}\n    auto = no\n  }}" for name, use in _SPECIAL_USE
    )
    capability = "" if condstore else f"imap_capability = {_capability_without_condstore()}\n"
    return f"""# Private test server written by devkit.dovecot; plaintext, no TLS: never expose it.
base_dir = {runtime_dir}
state_dir = {base_dir}/state
instance_name = mailsync-devkit-{token}
log_path = {base_dir}/dovecot.log
protocols = imap
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
login_greeting = mailsync-devkit {token} ready.
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:~/Maildir
# Tests try wrong passwords on purpose: answer failures within ~0.5 s instead
# of 2 s, and (see service anvil below) without the growing per-IP penalty.
auth_failure_delay = 0
# Throw-away data: durability is not worth the fsync cost in benchmarks.
mail_fsync = never
# Notice files written straight into a Maildir quickly while a client IDLEs.
mailbox_idle_check_interval = 1 secs
{capability}
# One file per user: Dovecot reads a file it has not seen on first lookup, so
# users added while the server runs can log in at once.
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {base_dir}/passwd.d/%Lu
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {base_dir}/passwd.d/%Lu
}}

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}

service anvil {{
  # Auth disables its penalty (up to 15 s per failed login) when it cannot
  # connect to this socket.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

protocol imap {{
  # Benchmarks open many parallel sessions for one user from one address.
  mail_max_userip_connections = 500
}}

namespace inbox {{
  inbox = yes
  separator = /
  prefix =
{mailboxes}
}}
{extra_config}
"""


def start_dovecot(
    base_dir: Path | None = None,
    *,
    port: int = 0,
    condstore: bool = True,
    extra_config: str = "",
) -> DovecotServer:
    """Start a private Dovecot on 127.0.0.1 and return once it accepts connections.

    `base_dir` holds config, users, mail, logs and runtime files; if omitted a
    temporary directory is created (in /dev/shm when available, because
    seeding is file-creation bound) and removed again by `stop()`. Every
    directory above it must be searchable by the `dovecot` user. `port=0`
    picks a free port. `condstore=False` hides CONDSTORE and QRESYNC from
    CAPABILITY. `extra_config` is appended verbatim to dovecot.conf.
    The server is stopped at interpreter exit, and by a watchdog process if
    this process dies without running atexit handlers (e.g. `os._exit`).
    """
    binary = find_dovecot()
    if os.geteuid() != 0:
        raise PermissionError("devkit.dovecot runs Dovecot as root; run as root")
    try:
        account = pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
    except KeyError as exc:
        raise DovecotNotInstalled(f"system user missing ({exc})") from exc
    uid, gid = account.pw_uid, account.pw_gid
    host = "127.0.0.1"

    remove_base_dir = base_dir is None
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="mailsync-dovecot-", dir=_default_parent()))
    base_dir = Path(base_dir).resolve()
    if re.search(r'[\s"\\#{}$%]', str(base_dir)):
        raise ValueError(f"base_dir {base_dir} contains characters Dovecot's config cannot take unquoted")
    base_dir.mkdir(parents=True, exist_ok=True)
    # mkdtemp creates 0700 directories; Dovecot's mail processes run as the dovecot user.
    base_dir.chmod(0o755)
    blocked = _searchable_by(base_dir, uid, gid)
    if blocked is not None:
        if remove_base_dir:
            shutil.rmtree(base_dir, ignore_errors=True)
        raise ValueError(
            f"{blocked} is not searchable by the dovecot user; choose a base_dir elsewhere (e.g. under /tmp)"
        )

    runtime_dir = base_dir / "run"
    remove_runtime_dir = False
    if len(str(runtime_dir)) > _MAX_RUNTIME_DIR_LEN:
        runtime_dir = Path(tempfile.mkdtemp(prefix="msdv-", dir="/tmp"))
        remove_runtime_dir = True
    runtime_dir.mkdir(exist_ok=True)
    runtime_dir.chmod(0o755)
    for name in ("state", "home"):
        (base_dir / name).mkdir(exist_ok=True)
        (base_dir / name).chmod(0o755)
    users = base_dir / "passwd.d"
    users.mkdir(exist_ok=True)
    os.chown(users, 0, gid)
    users.chmod(0o750)

    config = base_dir / "dovecot.conf"
    attempts = 5 if port == 0 else 1
    last_error = ""
    for _ in range(attempts):
        chosen = port or _free_port(host)
        token = secrets.token_hex(6)
        config.write_text(
            _render_config(
                base_dir=base_dir,
                runtime_dir=runtime_dir,
                host=host,
                port=chosen,
                token=token,
                uid=uid,
                gid=gid,
                condstore=condstore,
                extra_config=extra_config,
            ),
            encoding="utf-8",
        )
        with open(base_dir / "dovecot.stderr", "wb") as stderr:
            process = subprocess.Popen(
                [binary, "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # Own process group: stop() can kill every Dovecot child at once,
                # and a Ctrl-C meant for the caller does not reach it first.
                start_new_session=True,
            )
        server = DovecotServer(
            host=host,
            port=chosen,
            base_dir=base_dir,
            _config=config,
            _runtime_dir=runtime_dir,
            _uid=uid,
            _gid=gid,
            _process=process,
            _remove_base_dir=remove_base_dir,
            _remove_runtime_dir=remove_runtime_dir,
        )
        _LIVE.add(server)
        leftovers = [d for d, owned in ((base_dir, remove_base_dir), (runtime_dir, remove_runtime_dir)) if owned]
        server._watchdog = _start_watchdog(process.pid, leftovers)
        if _wait_ready(process, host, chosen, token):
            return server
        last_error = server._read_logs()
        # Keep the directory for the next attempt; only the process goes.
        server._remove_base_dir = server._remove_runtime_dir = False
        server.stop()
    if remove_runtime_dir:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    if remove_base_dir:
        shutil.rmtree(base_dir, ignore_errors=True)
    raise RuntimeError(f"Dovecot did not start on {host}:{port or 'a free port'}:\n{last_error}")


def _start_watchdog(pgid: int, leftovers: list[Path]) -> subprocess.Popen[bytes]:
    # `read` returns when our end of the pipe closes, i.e. when this process
    # exits by any means (including os._exit or SIGKILL); then the Dovecot
    # process group is terminated and temporary directories (possibly
    # hundreds of MB in /dev/shm) are removed. stop() kills the watchdog first.
    script = 'trap "" INT HUP; read -r _ignored; kill -TERM "-$0" 2>/dev/null; sleep 1; for d; do rm -rf -- "$d"; done'
    return subprocess.Popen(
        ["sh", "-c", script, str(pgid), *map(str, leftovers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_ready(process: subprocess.Popen[bytes], host: str, port: int, token: str, timeout: float = 15.0) -> bool:
    # The greeting carries a per-start token: if another program grabbed the
    # port between picking and binding, we must not mistake it for our server.
    deadline = time.monotonic() + timeout
    expected = f"mailsync-devkit {token} ready.".encode("ascii")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                greeting = sock.recv(512)
            if expected in greeting:
                return True
            if greeting:
                return False
        except OSError:
            pass
        time.sleep(0.02)
    return False
