"""`mailsync account add gmail`, `account update` and `verify` of Gmail accounts, against the local Gmail API server.

The CLI runs as a user runs it (a subprocess with the session's DATABASE_URL and secret key); the
Gmail fake serves the API and the OAuth token endpoint on loopback. Verify is checked against a
mirror written straight into the tables (the sync has its own tests, verified by this command).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from conftest import REPO, AccountFactory, run_cli
from devkit.gmail_fake import GmailFake
from providers.gmail import GmailCredentials, parse_credentials
from store.crypto import CredentialBox

CLIENT_ID = "mailsync-cli-test"
CLIENT_SECRET = "cli-test-secret"
FOLDERS = ("INBOX", "Sent", "Archive", "Lists/Python", "Spam", "Trash")


@pytest.fixture(scope="module")
def fake() -> Iterator[GmailFake]:
    with GmailFake.start() as server:
        yield server


def new_user(fake: GmailFake, n: int = 0, seed: int = 0) -> str:
    user = f"g{uuid.uuid4().hex[:10]}@example.com"
    fake.add_user(user)
    if n:
        fake.seed(user, n, seed=seed, folders=FOLDERS)
    return user


def credentials_file(tmp_path: Path, fake: GmailFake, refresh_token: str, name: str = "creds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({
        "type": "authorized_user", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "refresh_token": refresh_token, "token_uri": fake.token_uri,
    }))
    return path


async def add_gmail(cli_env: dict[str, str], fake: GmailFake, path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return await run_cli(cli_env, "account", "add", "gmail", "--credentials", str(path),
                         "--api-endpoint", fake.endpoint, *extra)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_stored_credentials_round_trip() -> None:
    oauth = GmailCredentials.oauth("cid", "secret", "refresh", token_uri="http://127.0.0.1:1/token")
    assert parse_credentials(json.loads(oauth.model_dump_json().encode())) == oauth
    info = {"type": "service_account", "client_email": "a@p.iam.gserviceaccount.com", "private_key": "k",
            "token_uri": "http://t"}
    delegated = GmailCredentials.service_account(info, "dana@example.com")
    assert parse_credentials(json.loads(delegated.model_dump_json())) == delegated


async def test_add_gmail_stores_the_account_encrypted_and_refuses_a_duplicate(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    user = new_user(fake, 3)
    token = fake.refresh_token(user)
    path = credentials_file(tmp_path, fake, token)
    added = await add_gmail(cli_env, fake, path)
    assert added.returncode == 0, added.stderr
    account_id = added.stdout.strip().splitlines()[-1]
    assert account_id.startswith("acc_")
    assert user in added.stderr
    row = await pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account_id)
    assert (row["provider"], row["address"]) == ("gmail", user)
    assert json.loads(row["settings"]) == {"api_endpoint": fake.endpoint}
    sealed = bytes(row["credentials"])
    for secret in (token, CLIENT_SECRET):
        assert secret.encode() not in sealed
    assert token not in row["settings"]
    stored = parse_credentials(json.loads(box.open(sealed, account_id)))
    assert (stored.kind, stored.client_id, stored.client_secret, stored.refresh_token, stored.token_uri) == (
        "authorized_user", CLIENT_ID, CLIENT_SECRET, token, fake.token_uri)

    # the same mailbox again (another grant, same address, any case): refused in one line
    upper = credentials_file(tmp_path, fake, fake.set_refresh_token(user), "other.json")
    again = await add_gmail(cli_env, fake, upper)
    assert again.returncode == 1
    assert "exists already" in one_line(again.stderr) and account_id in again.stderr
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE lower(address) = lower($1)", user) == 1

    listed = await run_cli(cli_env, "account", "list", "--json")
    assert any(a["id"] == account_id and a["provider"] == "gmail" for a in json.loads(listed.stdout))


async def test_add_gmail_failures_are_one_line_and_store_nothing(
    fake: GmailFake, pool: asyncpg.Pool, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    before = await pool.fetchval("SELECT count(*) FROM accounts")

    revoked_user = new_user(fake)
    revoked = credentials_file(tmp_path, fake, fake.refresh_token(revoked_user), "revoked.json")
    fake.revoke(revoked_user)
    result = await add_gmail(cli_env, fake, revoked)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "refused the credentials" in line and "invalid_grant" in line, line

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    ok_user = new_user(fake)
    ok = credentials_file(tmp_path, fake, fake.refresh_token(ok_user), "ok.json")
    result = await run_cli(cli_env, "account", "add", "gmail", "--credentials", str(ok), "--api-endpoint", closed)
    assert result.returncode == 1
    assert "cannot reach" in one_line(result.stderr)

    not_json = tmp_path / "broken.json"
    not_json.write_text("{ not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"type": "something_else"}))
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"type": "authorized_user", "client_id": "x"}))
    service_account = tmp_path / "sa.json"
    service_account.write_text(json.dumps({"type": "service_account", "client_email": "a@b", "private_key": "k",
                                           "token_uri": fake.token_uri}))
    for path, expected in [(tmp_path / "absent.json", "no such file"), (not_json, "not JSON"),
                           (unknown, "unrecognised credentials"), (incomplete, "need client_secret, refresh_token"),
                           (service_account, "--user")]:
        result = await add_gmail(cli_env, fake, path)
        assert result.returncode == 1, (path, result.stderr)
        assert expected in one_line(result.stderr), (path, result.stderr)

    fake.force_rate_limit(10, user=ok_user, retry_after=60)  # Retry-After beyond what the CLI waits for
    try:
        result = await add_gmail(cli_env, fake, ok)
    finally:
        fake.quota.reset()
    assert result.returncode == 1
    assert "quota" in one_line(result.stderr)

    assert await pool.fetchval("SELECT count(*) FROM accounts") == before


async def test_update_gmail_credentials(
    fake: GmailFake, pool: asyncpg.Pool, box: CredentialBox, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    user = new_user(fake, 2)
    added = await add_gmail(cli_env, fake, credentials_file(tmp_path, fake, fake.refresh_token(user)))
    assert added.returncode == 0, added.stderr
    account_id = added.stdout.strip().splitlines()[-1]

    async def stored_token() -> str | None:
        sealed = await pool.fetchval("SELECT credentials FROM accounts WHERE id = $1", account_id)
        return parse_credentials(json.loads(box.open(bytes(sealed), account_id))).refresh_token

    fake.revoke(user)  # the user revokes the app, then consents again: a new refresh token
    stale = credentials_file(tmp_path, fake, "1//revoked-token", "stale.json")
    refused = await run_cli(cli_env, "account", "update", account_id, "--credentials", str(stale))
    assert refused.returncode == 1 and "refused the credentials" in one_line(refused.stderr)

    other = credentials_file(tmp_path, fake, fake.refresh_token(new_user(fake)), "other.json")
    wrong = await run_cli(cli_env, "account", "update", account_id, "--credentials", str(other))
    assert wrong.returncode == 1 and f"not {user}" in one_line(wrong.stderr)

    password = await run_cli(cli_env, "account", "update", account_id, "--password-stdin", input="pw\n")
    assert password.returncode == 1 and "--credentials" in one_line(password.stderr)

    fresh_token = fake.set_refresh_token(user)
    fresh = credentials_file(tmp_path, fake, fresh_token, "fresh.json")
    updated = await run_cli(cli_env, "account", "update", user, "--credentials", str(fresh))
    assert updated.returncode == 0, updated.stderr
    assert "new credentials stored" in updated.stderr
    assert await stored_token() == fresh_token


# Verify ---------------------------------------------------------------------------------------------------------


async def mirror(pool: asyncpg.Pool, fake: GmailFake, user: str, account_id: str) -> list[str]:
    """Write what a perfect sync would: gmail_messages, messages, bodies and label rows; returns the ids."""
    ids = fake.message_ids(user)
    async with pool.acquire() as conn, conn.transaction():
        for gmail_id in ids:
            message = fake.message(user, gmail_id)
            digest = hashlib.sha256(message.raw).digest()
            pk = await conn.fetchval(
                """INSERT INTO messages (account_id, sha256, size) VALUES ($1, $2, $3)
                   ON CONFLICT (account_id, sha256) DO UPDATE SET size = EXCLUDED.size RETURNING id""",
                account_id, digest, len(message.raw),
            )
            await conn.execute(
                "INSERT INTO message_bodies (account_id, sha256, raw) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                account_id, digest, message.raw,
            )
            await conn.execute(
                """INSERT INTO gmail_messages (account_id, gmail_id, gmail_thread_id, message_pk, history_id)
                   VALUES ($1, $2, $3, $4, $5)""",
                account_id, gmail_id, message.thread_id, pk, message.history_id,
            )
            await conn.executemany(
                "INSERT INTO gmail_message_labels (account_id, gmail_id, label_id) VALUES ($1, $2, $3)",
                [(account_id, gmail_id, label) for label in message.label_set()],
            )
    return ids


async def verify_json(cli_env: dict[str, str], account_id: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = await run_cli(cli_env, "verify", account_id, "--json")
    assert result.returncode in (0, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def differences(report: dict) -> dict[str, int]:  # type: ignore[type-arg]
    keys = ("missing", "extra", "mismatched", "thread_differences", "label_differences")
    return {k: report[k] for k in keys if report[k]}


async def test_verify_gmail_account(
    fake: GmailFake, pool: asyncpg.Pool, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    user = new_user(fake, 20, seed=7)
    added = await add_gmail(cli_env, fake, credentials_file(tmp_path, fake, fake.refresh_token(user)))
    assert added.returncode == 0, added.stderr
    account_id = added.stdout.strip().splitlines()[-1]

    empty_code, empty = await verify_json(cli_env, account_id)
    assert empty_code == 2 and (empty["server"], empty["database"], empty["missing"]) == (20, 0, 20)
    assert empty["label_differences"] == 0  # label rows are compared on messages present on both sides

    ids = await mirror(pool, fake, user, account_id)
    spam_or_trash = [i for i in ids if {"SPAM", "TRASH"} & set(fake.message(user, i).label_set())]
    assert spam_or_trash, "the seeded mailbox should have spam or trash: verify must list them too"

    code, report = await verify_json(cli_env, account_id)
    assert code == 0, report
    assert report["identical"] and (report["server"], report["database"]) == (20, 20)
    labels = {label["label_id"]: label for label in report["labels"]}
    inbox = [i for i in ids if "INBOX" in fake.message(user, i).label_set()]
    assert labels["INBOX"]["server"] == labels["INBOX"]["database"] == len(inbox) > 0
    text = await run_cli(cli_env, "verify", user)
    assert text.returncode == 0 and "identical" in text.stdout and "NOT" not in text.stdout, text.stdout
    assert "(all messages)" in text.stdout

    # export: a Gmail account's folders are its labels, byte-for-byte, flags from UNREAD/STARRED
    exported = await run_cli(cli_env, "export", account_id, "--folder", "inbox", "--maildir", str(tmp_path / "in"))
    assert exported.returncode == 0, exported.stderr
    files = {f.name.split(".")[0]: f for f in (tmp_path / "in" / "cur").iterdir()}
    assert sorted(files) == sorted(inbox)
    for gmail_id, path in files.items():
        stored = fake.message(user, gmail_id)
        assert path.read_bytes() == stored.raw
        assert ("S" in path.name.rsplit(",", 1)[1]) == ("UNREAD" not in stored.label_set())
    unknown = await run_cli(cli_env, "export", account_id, "--folder", "Nope", "--maildir", str(tmp_path / "x"))
    assert unknown.returncode == 1 and "no label 'Nope'" in unknown.stderr and "INBOX" in unknown.stderr
    assert not (tmp_path / "x").exists()

    # one label assignment lost
    gone_label = await pool.fetchrow(
        "DELETE FROM gmail_message_labels WHERE account_id = $1 AND gmail_id = $2 AND label_id = 'INBOX' RETURNING *",
        account_id, inbox[0],
    )
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"label_differences": 1}
    assert {(label["label_id"], label["missing"]) for label in report["labels"] if label["missing"]} == {("INBOX", 1)}
    text = await run_cli(cli_env, "verify", account_id)
    assert text.returncode == 2 and "NOT identical" in text.stdout and "1 label differences" in text.stdout
    await pool.execute("INSERT INTO gmail_message_labels VALUES ($1, $2, $3)", *gone_label.values())

    # a label the message does not carry, and one Gmail does not have at all
    unstarred = next(i for i in ids if "STARRED" not in fake.message(user, i).label_set())
    await pool.execute("INSERT INTO gmail_message_labels VALUES ($1, $2, 'STARRED'), ($1, $2, 'Label_gone')",
                       account_id, unstarred)
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"label_differences": 2}
    assert {(label["label_id"], label["extra"]) for label in report["labels"] if label["extra"]} == {
        ("STARRED", 1), ("Label_gone", 1)}
    await pool.execute("DELETE FROM gmail_message_labels WHERE account_id = $1 AND gmail_id = $2 "
                       "AND label_id IN ('STARRED', 'Label_gone')", account_id, unstarred)
    assert (await verify_json(cli_env, account_id))[0] == 0

    # one stored body changed: its bytes no longer match the sha256 Gmail's bytes have
    victim = ids[3]
    digest = hashlib.sha256(fake.message(user, victim).raw).digest()
    original = await pool.fetchval("SELECT raw FROM message_bodies WHERE account_id = $1 AND sha256 = $2",
                                   account_id, digest)
    await pool.execute("UPDATE message_bodies SET raw = $3 WHERE account_id = $1 AND sha256 = $2",
                       account_id, digest, original + b"tampered")
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"mismatched": 1}
    await pool.execute("UPDATE message_bodies SET raw = $3 WHERE account_id = $1 AND sha256 = $2",
                       account_id, digest, original)
    # the message row records another sha256 than Gmail's bytes have
    await pool.execute("UPDATE messages SET sha256 = $3 WHERE account_id = $1 AND sha256 = $2",
                       account_id, digest, hashlib.sha256(b"other bytes").digest())
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"mismatched": 1}
    await pool.execute("UPDATE messages SET sha256 = $2 WHERE account_id = $1 AND sha256 = $3",
                       account_id, digest, hashlib.sha256(b"other bytes").digest())
    assert (await verify_json(cli_env, account_id))[0] == 0

    # one message dropped, one marked deleted though Gmail still has it, one live that Gmail does not have
    await pool.execute("DELETE FROM gmail_messages WHERE account_id = $1 AND gmail_id = $2", account_id, ids[0])
    await pool.execute("UPDATE gmail_messages SET deleted_at = now() WHERE account_id = $1 AND gmail_id = $2",
                       account_id, ids[1])
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"missing": 2}
    assert (report["server"], report["database"]) == (20, 18)
    fake.delete_message(user, ids[2])
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"missing": 2, "extra": 1}
    assert (report["server"], report["database"]) == (19, 18)

    # a deleted message marked so, a thread id that is not Gmail's
    await pool.execute("UPDATE gmail_messages SET deleted_at = now() WHERE account_id = $1 AND gmail_id = $2",
                       account_id, ids[2])
    await pool.execute("UPDATE gmail_messages SET gmail_thread_id = 'ffff' WHERE account_id = $1 AND gmail_id = $2",
                       account_id, ids[4])
    code, report = await verify_json(cli_env, account_id)
    assert code == 2 and differences(report) == {"missing": 2, "thread_differences": 1}

    fake.revoke(user)
    revoked = await run_cli(cli_env, "verify", account_id)
    assert revoked.returncode == 1 and "account update" in one_line(revoked.stderr)


async def test_add_imap_twice_is_refused(
    make_account: AccountFactory, pool: asyncpg.Pool, cli_env: dict[str, str],
) -> None:
    existing = await make_account()
    added = await run_cli(
        cli_env, "account", "add", "imap", "--host", existing.host, "--port", str(existing.port), "--username",
        existing.username, "--security", "none", "--password-stdin", "--address", "else@example.test",
        input=existing.password + "\n",
    )
    assert added.returncode == 1
    assert "exists already" in one_line(added.stderr) and existing.id in added.stderr
    assert await pool.fetchval("SELECT count(*) FROM accounts WHERE address = 'else@example.test'") == 0


async def test_dev_gmail_serves_a_mailbox_that_account_add_accepts(
    cli_env: dict[str, str], tmp_path: Path, pool: asyncpg.Pool,
) -> None:
    """`mailsync dev gmail`: a local Gmail API and a credentials file, ready for `account add gmail`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = f"dev-{uuid.uuid4().hex[:6]}@example.test"
    env = cli_env | {"MAILSYNC_STATE_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "dev", "gmail", "--port", str(port), "--seed-messages", "5", "--user", user,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        served = json.loads(line)
        creds = served["users"][0]["credentials_file"]
        assert served["endpoint"] == f"http://127.0.0.1:{port}" and Path(creds).is_file()
        added = await run_cli(env, "account", "add", "gmail", "--credentials", creds,
                              "--api-endpoint", served["endpoint"])
        assert added.returncode == 0, added.stderr
        account_id = added.stdout.strip()
        assert await pool.fetchval("SELECT address FROM accounts WHERE id = $1", account_id) == user
    finally:
        proc.terminate()
        await proc.wait()
