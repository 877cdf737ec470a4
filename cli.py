"""The `mailsync` command line: accounts, syncs (start/follow/status), export, verify, dev services, worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from config import Settings, get_settings

T = TypeVar("T")

app = typer.Typer(help="Mirror email accounts into PostgreSQL, durably, on Temporal.", no_args_is_help=True)
account_app = typer.Typer(help="Add, list, update and remove accounts.", no_args_is_help=True)
account_add_app = typer.Typer(help="Add an account.", no_args_is_help=True)
sync_app = typer.Typer(help="Start and watch syncs.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
dev_app = typer.Typer(help="Embedded dev services (Temporal dev server, PostgreSQL).", no_args_is_help=True)
app.add_typer(account_app, name="account")
account_app.add_typer(account_add_app, name="add")
app.add_typer(sync_app, name="sync")
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")

out = Console(soft_wrap=True)  # addresses and URLs stay whole when piped
err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 1."""


def _id_column(header: str, ids: list[str]) -> Column:
    """Account ids are what users copy into the next command: never cut, whatever the terminal width."""
    return Column(header, no_wrap=True, min_width=max([len(header), *map(len, ids)]))


def _exit(code: int) -> NoReturn:
    # temporalio can abort at interpreter exit (sdk-python #300): flush and leave without finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(coro_fn: Callable[[], Awaitable[T]]) -> NoReturn:
    """Run a command body, turn known failures into one clear line, and exit with the right code."""
    from providers.errors import ProviderError
    from runtime.temporal import TemporalNotConfigured, TemporalUnavailable
    from store.accounts import AccountNotFound
    from store.crypto import SecretKeyError
    from store.db import DatabaseUnavailable

    from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

    try:
        result = asyncio.run(coro_fn())  # type: ignore[arg-type]
    except (KeyboardInterrupt, asyncio.CancelledError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # Ctrl-C while waiting on an update surfaces as the client's "cancelled" error, not KeyboardInterrupt
        err.print("interrupted: a sync already started keeps running (see `mailsync sync status`)")
        _exit(130)
    except (CliError, ProviderError, TemporalNotConfigured, TemporalUnavailable, AccountNotFound,
            SecretKeyError, DatabaseUnavailable, ValidationError) as exc:
        err.print(f"[red]error:[/red] {_one_line(exc)}", highlight=False, soft_wrap=True)
        _exit(1)
    except Exception as exc:  # a bug or an unclassified failure: still one line, traceback on request
        if os.environ.get("MAILSYNC_DEBUG"):
            err.print_exception()
        err.print(f"[red]error:[/red] {type(exc).__name__}: {_one_line(exc)} (MAILSYNC_DEBUG=1 for the traceback)",
                  highlight=False, soft_wrap=True)
        _exit(1)
    _exit(result if isinstance(result, int) else 0)


def _one_line(exc: BaseException) -> str:
    """The exception's text on one line, with square brackets kept literal (not read as rich markup)."""
    from rich.markup import escape

    return escape(" ".join(str(exc).split()))


async def _pool(settings: Settings):  # type: ignore[no-untyped-def]
    from store.db import create_pool, resolve_database_url
    from store.migrate import migrate

    pool = await create_pool(resolve_database_url(settings), size=2)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


def _box(settings: Settings):  # type: ignore[no-untyped-def]
    from store.crypto import CredentialBox, load_or_create_key

    return CredentialBox(load_or_create_key(settings.secret_key, settings.state_dir))


def _read_password(password_env: str | None, password_stdin: bool) -> str:
    if bool(password_env) == password_stdin:
        raise CliError("give exactly one of --password-env VAR or --password-stdin")
    if password_env:
        value = os.environ.get(password_env)
        if value is None:
            raise CliError(f"environment variable {password_env} is not set")
        return value
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise CliError("no password on standard input")
    return value


# ---------------------------------------------------------------- accounts


@account_add_app.command("imap")
def account_add_imap(
    host: str = typer.Option(..., help="IMAP server host name"),
    username: str = typer.Option(..., help="login name (often the email address)"),
    port: int | None = typer.Option(None, help="default: 993 for tls, 143 otherwise"),
    security: str = typer.Option("tls", help="tls | starttls | none"),
    password_env: str | None = typer.Option(None, help="read the password from this environment variable"),
    password_stdin: bool = typer.Option(False, help="read the password from the first line of stdin"),
    address: str | None = typer.Option(None, help="email address (default: the username)"),
) -> None:
    """Check the login, then store the account with its password encrypted; prints the account id."""

    async def body() -> int:
        from providers.imap.client import ImapSession
        from providers.imap.settings import ImapSettings
        from store.accounts import create_account

        settings = get_settings()
        imap = ImapSettings(host=host, port=port, username=username, security=security)  # type: ignore[arg-type]
        password = _read_password(password_env, password_stdin)
        async with ImapSession(
            imap, password, auth_timeout=settings.imap_auth_timeout, timeout=settings.imap_timeout
        ) as session:
            folders = await session.list_folders()
        account_id = "acc_" + uuid.uuid4().hex[:12]
        pool = await _pool(settings)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _refuse_duplicate(conn, "imap", address or username, imap=imap)
                await create_account(
                    conn, account_id=account_id, provider="imap", address=address or username,
                    settings=imap.model_dump(mode="json"),
                    credentials=_box(settings).seal(password.encode(), account_id),
                )
        finally:
            await pool.close()
        err.print(f"login ok, {len(folders)} folders on {imap.host}; account stored")
        out.print(account_id, highlight=False)
        return 0

    run(body)


@account_add_app.command("gmail")
def account_add_gmail(
    credentials: Path = typer.Option(..., help="credentials JSON: OAuth authorized_user, OAuth client secret file "
                                     "with a refresh_token, or a service account key (with --user)"),
    user: str | None = typer.Option(None, help="the mailbox a service account acts for (domain-wide delegation)"),
    api_endpoint: str | None = typer.Option(None, help="Gmail API base URL (default Google's; a local "
                                            "Gmail-compatible server for tests)"),
) -> None:
    """Check the grant (token refresh + users.getProfile), then store the account with its credentials encrypted."""

    async def body() -> int:
        from store.accounts import create_account

        settings = get_settings()
        creds = _gmail_credentials(credentials, user)
        profile = await _gmail_profile(settings, creds, api_endpoint, credentials)
        account_id = "acc_" + uuid.uuid4().hex[:12]
        pool = await _pool(settings)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _refuse_duplicate(conn, "gmail", profile.email)
                await create_account(
                    conn, account_id=account_id, provider="gmail", address=profile.email,
                    settings={"api_endpoint": api_endpoint},
                    credentials=_box(settings).seal(creds.model_dump_json().encode(), account_id),
                )
        finally:
            await pool.close()
        err.print(f"grant ok for {profile.email} ({profile.messages_total} messages); account stored",
                  highlight=False)
        out.print(account_id, highlight=False)
        return 0

    run(body)


async def _refuse_duplicate(conn: Any, provider: str, address: str, *, imap: Any = None) -> None:
    """CliError when the account exists already (same provider and address; for IMAP also host + username).

    Call inside the transaction that inserts the account: the advisory lock serializes concurrent adds.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mailsync account add'))")
    existing = await conn.fetchval(
        "SELECT id FROM accounts WHERE provider = $1 AND lower(address) = lower($2) ORDER BY created_at LIMIT 1",
        provider, address,
    )
    if existing:
        how = "--credentials FILE" if provider == "gmail" else "--password-stdin"
        raise CliError(f"{provider} account {address} exists already ({existing}); "
                       f"`mailsync account update {existing} {how}` changes its credentials")
    if imap is not None:
        existing = await conn.fetchval(
            """SELECT id FROM accounts WHERE provider = 'imap' AND lower(settings->>'host') = lower($1)
               AND settings->>'username' = $2 ORDER BY created_at LIMIT 1""",
            imap.host, imap.username,
        )
        if existing:
            raise CliError(f"an account for {imap.username} on {imap.host} exists already ({existing}); "
                           f"`mailsync account update {existing} --password-stdin` changes its password")


def _gmail_credentials(path: Path, user: str | None, *, default_user: str | None = None) -> Any:
    """GmailCredentials from a credentials file (providers.gmail.credentials lists the shapes); CliError otherwise.

    `default_user` is the subject a service account key acts for when --user is not given.
    """
    from providers.gmail import parse_credentials

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and not user and "service_account" in (data.get("type"), data.get("kind")):
        user = default_user
    try:
        return parse_credentials(data, subject=user)
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise CliError(f"{path}: not usable Gmail credentials: {reasons}") from None
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None


async def _gmail_profile(settings: Settings, creds: Any, api_endpoint: str | None, path: Path) -> Any:
    """users.getProfile with these credentials (the first request refreshes the token): the grant works.

    Failures become one CliError line saying what to do about them.
    """
    from google.auth.exceptions import RefreshError

    from providers.errors import NetworkError
    from providers.gmail import AccessDenied, AuthExpired, GmailSession, RateLimited

    endpoint = api_endpoint or "the Gmail API"
    try:
        async with GmailSession(creds, api_endpoint=api_endpoint, timeout=settings.imap_timeout,
                                max_retry_rounds=2, max_retry_after=10.0) as gmail:
            return await gmail.profile()
    except AuthExpired as exc:
        cause = exc.__cause__
        detail = cause.args[0] if isinstance(cause, RefreshError) and cause.args else str(exc)
        raise CliError(f"Google refused the credentials in {path} ({detail}): the grant is revoked or expired, "
                       "or the client id/secret is wrong; authorize again and retry") from None
    except AccessDenied as exc:
        raise CliError(f"Gmail denied access with the credentials in {path} ({exc}): check the granted scopes "
                       "and, for a service account, its domain-wide delegation and --user") from None
    except RateLimited as exc:
        raise CliError(f"Gmail quota exceeded ({exc}): try again later") from None
    except NetworkError as exc:
        raise CliError(f"cannot reach {endpoint} or the token endpoint {creds.token_uri}: {exc}") from None


@account_app.command("list")
def account_list(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List accounts with their status and what is stored."""

    async def body() -> int:
        from store.accounts import list_accounts

        pool = await _pool(get_settings())
        async with pool.acquire() as conn:
            rows = await list_accounts(conn)
        await pool.close()
        if as_json:
            out.print_json(json.dumps(rows, default=str))
            return 0
        table = Table(_id_column("id", [r["id"] for r in rows]), "provider", "address", "status", "folders",
                      "messages", "MB")
        for r in rows:
            status = r["status"] + (f" ({r['status_reason']})" if r["status_reason"] else "")
            table.add_row(r["id"], r["provider"], r["address"], status, str(r["folders"]), str(r["messages"]),
                          f"{r['bytes'] / 1e6:.1f}")
        out.print(table)
        return 0

    run(body)


@account_app.command("update")
def account_update(
    account: str = typer.Argument(..., help="account id or address"),
    password_env: str | None = typer.Option(None, help="IMAP: read the new password from this environment variable"),
    password_stdin: bool = typer.Option(False, help="IMAP: read the new password from the first line of stdin"),
    credentials: Path | None = typer.Option(None, help="Gmail: a new credentials JSON file (same shapes as "
                                            "`account add gmail`)"),
    user: str | None = typer.Option(None, help="Gmail: the mailbox a service account acts for (default: the "
                                    "account's address)"),
) -> None:
    """Check and store new credentials (IMAP password, Gmail grant); a sync parked in auth_failed resumes at once."""

    async def body() -> int:
        from store.accounts import update_credentials
        from workflows.account_sync import AccountSyncWorkflow

        settings = get_settings()
        acc = await _account(settings, account)
        if acc.provider == "gmail":
            if password_env or password_stdin:
                raise CliError(f"{acc.id} is a Gmail account: give --credentials FILE, not a password")
            if credentials is None:
                raise CliError(f"{acc.id} is a Gmail account: give --credentials FILE")
            creds = _gmail_credentials(credentials, user, default_user=acc.address)
            profile = await _gmail_profile(settings, creds, acc.settings.get("api_endpoint"), credentials)
            if profile.email.lower() != acc.address.lower():
                raise CliError(f"{credentials} opens the mailbox {profile.email}, not {acc.address}: "
                               "nothing changed")
            sealed = _box(settings).seal(creds.model_dump_json().encode(), acc.id)
            done = f"grant ok; new credentials stored for {acc.id}"
        elif acc.provider == "imap":
            from providers.imap.client import ImapSession
            from providers.imap.settings import ImapSettings

            if credentials is not None or user is not None:
                raise CliError(f"{acc.id} is an IMAP account: give --password-env VAR or --password-stdin")
            password = _read_password(password_env, password_stdin)
            imap = ImapSettings.model_validate(acc.settings)
            async with ImapSession(imap, password, auth_timeout=settings.imap_auth_timeout,
                                   timeout=settings.imap_timeout):
                pass
            sealed = _box(settings).seal(password.encode(), acc.id)
            done = f"login ok; new password stored for {acc.id}"
        else:
            raise CliError(f"{acc.id}: unknown provider {acc.provider!r}")
        pool = await _pool(settings)
        async with pool.acquire() as conn:
            await update_credentials(conn, acc.id, sealed)
        await pool.close()
        err.print(done, highlight=False)
        # no sync running: the next `sync start` uses the new credentials
        if await _if_running(settings, acc.id, lambda h: h.signal(AccountSyncWorkflow.credentials_updated)):
            err.print("the running sync was told to resume", highlight=False)
        return 0

    run(body)


@account_app.command("remove")
def account_remove(
    account: str = typer.Argument(..., help="account id or address"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Stop the account's sync and delete the account with everything mirrored for it."""

    async def body() -> int:
        from store.accounts import delete_account

        settings = get_settings()
        acc = await _account(settings, account)
        pool = await _pool(settings)
        count = await pool.fetchval("SELECT count(*) FROM messages WHERE account_id = $1", acc.id)
        if not yes:
            if not sys.stdin.isatty():
                raise CliError("refusing to delete without confirmation: pass --yes")
            if not typer.confirm(f"Delete {acc.id} ({acc.address}) and its {count} stored messages?"):
                raise CliError("nothing deleted")
        if await _if_running(settings, acc.id, lambda h: h.terminate("account removed")):
            err.print(f"stopped the sync of {acc.id}", highlight=False)
        async with pool.acquire() as conn:
            removed = await delete_account(conn, acc.id)
        await pool.close()
        err.print(f"deleted {acc.id} and {removed} messages", highlight=False)
        return 0

    run(body)


# ---------------------------------------------------------------- sync


async def _account(settings: Settings, account: str) -> Any:
    """The stored account for an id or address (store.accounts.Account)."""
    from store.accounts import get_account

    pool = await _pool(settings)
    async with pool.acquire() as conn:
        acc = await get_account(conn, account)
    await pool.close()
    return acc


async def _account_id(settings: Settings, account: str) -> str:
    return (await _account(settings, account)).id


async def _if_running(settings: Settings, account_id: str, action: Callable[[Any], Awaitable[object]]) -> bool:
    """Apply action to the account's workflow handle; False when there is no such workflow."""
    from temporalio.service import RPCError

    from runtime.temporal import connect
    from workflows.account_sync import account_workflow_id

    client = await connect(settings)
    try:
        await action(client.get_workflow_handle(account_workflow_id(account_id)))
    except RPCError:
        return False
    return True


def _progress_line(p: Any) -> str:
    head = f"{p.phase.value}: {p.done}/{p.total} messages ({p.percent:.1f}%), {p.bytes / 1e6:.1f} MB"
    if p.phase.value in ("starting", "discovering", "initial"):
        eta = f", ETA {timedelta(seconds=int(p.eta_seconds))}" if p.eta_seconds else ""
        return f"{head}, {p.messages_per_second:.0f} msg/s{eta}"
    # past the initial sync the rate is history, not a current speed
    return f"{head} (initial sync ran at {p.messages_per_second:.0f} msg/s)" if p.messages_per_second else head


def _retrying(desc: Any) -> str | None:
    """What the account workflow is retrying right now, from its pending activities: a failure shows
    there at once, long before the activity's retries are spent and the workflow records the error."""
    for a in desc.raw_description.pending_activities:
        if a.attempt > 1 and a.last_failure.message:
            return f"{a.activity_type.name} (attempt {a.attempt}): {a.last_failure.message}"
    return None


async def _say_what_is_retried(handle: Any, every: float = 2.0) -> None:
    """For a blocking wait: one stderr line whenever what the workflow is retrying changes."""
    said: str | None = None
    while True:
        await asyncio.sleep(every)
        try:
            now = _retrying(await handle.describe())
        except Exception:  # noqa: BLE001 - best effort: the wait itself reports real failures
            continue
        if now != said and now is not None:
            err.print(f"[yellow]retrying[/yellow] {now}", highlight=False)
        said = now


async def _follow(handle: Any) -> None:
    """Live per-folder progress bars until the workflow closes."""
    from temporalio.client import WorkflowExecutionStatus

    from workflows.account_sync import AccountSyncWorkflow

    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, Any] = {}
        overall: Any = None  # added once there is more than one row to sum up
        while True:
            desc = await handle.describe()
            try:
                p = await handle.query(AccountSyncWorkflow.progress)
            except Exception:
                p = None
            if p is not None:
                for f in p.folders:
                    if f.name not in tasks:
                        tasks[f.name] = bar.add_task(f.name[:24], total=None, info="")
                    info = f"{f.bytes / 1e6:.1f} MB" + (f" [red]{f.error}[/red]" if f.error else "")
                    bar.update(tasks[f.name], completed=f.done, total=f.total or None, info=info)
                for f in p.backfill:  # older mail of a --since sync, beside the live mirror
                    key = "older: " + f.name
                    if key not in tasks:
                        tasks[key] = bar.add_task(key[:24], total=None, info="")
                    bar.update(tasks[key], completed=f.done, total=f.total or None, info=f"{f.bytes / 1e6:.1f} MB")
                if overall is None and len(p.folders) > 1:
                    overall = bar.add_task("[bold]all folders", total=None, info="")
                if overall is not None:
                    bar.update(overall, completed=p.done, total=p.total or None,
                               info=f"{p.phase.value}, {p.messages_per_second:.0f} msg/s")
                elif len(p.folders) == 1:
                    only = tasks[p.folders[0].name]
                    bar.update(only, info=f"{p.folders[0].bytes / 1e6:.1f} MB, {p.phase.value}, "
                                          f"{p.messages_per_second:.0f} msg/s")
            retrying = _retrying(desc)
            if retrying is not None or "account" in tasks:  # e.g. the server is unreachable: say so
                if "account" not in tasks:
                    tasks["account"] = bar.add_task("account", total=None, info="")
                bar.update(tasks["account"], info=f"[yellow]retrying {retrying}[/yellow]" if retrying else
                           (p.phase.value if p is not None else ""))
            if desc.status != WorkflowExecutionStatus.RUNNING or (p is not None and p.phase.value in _SETTLED):
                return
            await asyncio.sleep(0.5)


_SETTLED = ("idle", "syncing", "backfill", "paused", "completed", "auth_failed", "auth_expired", "failed")


@sync_app.command("start")
def sync_start(
    account: str = typer.Argument(..., help="account id or address"),
    wait: bool = typer.Option(False, help="block until the initial sync completes; non-zero exit if it failed"),
    follow: bool = typer.Option(False, help="show live progress bars per folder"),
    once: bool = typer.Option(False, help="one-shot mirror: the workflow ends after the initial sync "
                              "(default: it stays and keeps the account current)"),
    since: str | None = typer.Option(None, help="sync mail received since then first (30d, 6m, 1y or "
                                     "2024-01-31), report the account usable, then backfill older mail"),
    window: str = typer.Option("all", help="how far back to mirror at all: all, or 1y, 90d, a date"),
) -> None:
    """Start the account's sync workflow, or attach to the one already running."""

    async def body() -> int:
        from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
        from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

        from runtime.temporal import connect, update_following_runs
        from workflows.account_sync import AccountSyncWorkflow, account_workflow_id
        from workflows.models import AccountSyncInput
        from workflows.policies import failure_message

        settings = get_settings()
        window_start = _day_option("--window", window)
        first = _day_option("--since", since) if since else window_start
        if window_start and first and first < window_start:
            raise CliError("--since reaches further back than --window")
        account_id = await _account_id(settings, account)
        client = await connect(settings)
        running = await _is_running(client, account_workflow_id(account_id))
        if running:
            ignored = [name for name, given in (("--once", once), ("--since", since), ("--window", window != "all"))
                       if given]
            err.print(
                "already syncing: attached to the running workflow"
                + (f" ({', '.join(ignored)} ignored: they apply when a sync starts; `mailsync sync resync` "
                   "re-mirrors everything)" if ignored else ""),
                highlight=False,
            )
        handle = await client.start_workflow(
            AccountSyncWorkflow.run,
            AccountSyncInput(
                account_id=account_id, tuning=settings.tuning(), live=not once, since=first, window_start=window_start,
            ),
            id=account_workflow_id(account_id), task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        out.print(handle.id, highlight=False)
        if not (wait or follow):
            return 0
        if follow:
            await _follow(handle)
        watcher = asyncio.create_task(_say_what_is_retried(handle)) if not follow else None
        try:
            if once:
                progress = (await handle.result()).progress
            else:
                progress = await update_following_runs(handle, AccountSyncWorkflow.wait_initial)
        except (WorkflowFailureError, WorkflowUpdateFailedError) as exc:
            err.print(f"[red]sync failed:[/red] {failure_message(exc)}", highlight=False)
            return 1
        finally:
            if watcher is not None:
                watcher.cancel()
        err.print(_progress_line(progress), highlight=False)
        if progress.phase.value in ("auth_failed", "auth_expired"):
            err.print(f"[red]the account is waiting for new credentials:[/red] {progress.last_error or ''}",
                      highlight=False)
            return 1
        if progress.phase.value == "backfill":
            err.print("usable now; older mail is being mirrored in the background (`mailsync sync status`)",
                      highlight=False)
        return 0

    run(body)


async def _is_running(client: Any, workflow_id: str) -> bool:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    try:
        desc = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return desc.status == WorkflowExecutionStatus.RUNNING


def _day_option(option: str, text: str) -> date | None:
    """`all` → None; `30d`, `6w`, `6m`, `1y` → that long ago (UTC); `2024-01-31` → that day."""
    text = text.strip().lower()
    if text == "all":
        return None
    match = re.fullmatch(r"(\d+)\s*([dwmy])", text)
    if match:
        days = int(match.group(1)) * {"d": 1, "w": 7, "m": 30, "y": 365}[match.group(2)]
        return (datetime.now(timezone.utc) - timedelta(days=days)).date()
    try:
        return date.fromisoformat(text)
    except ValueError:
        choices = "a duration like 30d / 6m / 1y, or a date like 2024-01-31"
        raise CliError(f"{option} {text!r}: use {choices}" if option == "--since" else
                       f"{option} {text!r}: use all, {choices}") from None


def _control(name: str, doc: str) -> None:
    """`mailsync sync pause|resume|resync ACCOUNT`: one signal to the running account workflow."""

    def command(account: str = typer.Argument(..., help="account id or address")) -> None:
        async def body() -> int:
            settings = get_settings()
            account_id = await _account_id(settings, account)
            handle = await _running_handle(settings, account_id)
            await handle.signal(name)
            err.print(f"{name} sent to {handle.id}", highlight=False)
            return 0

        run(body)

    command.__doc__ = doc
    sync_app.command(name)(command)


async def _running_handle(settings: Settings, account_id: str) -> Any:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from runtime.temporal import connect
    from workflows.account_sync import account_workflow_id

    client = await connect(settings)
    handle = client.get_workflow_handle(account_workflow_id(account_id))
    try:
        desc = await handle.describe()
    except RPCError as exc:
        raise CliError(f"no sync for {account_id}: start one with `mailsync sync start {account_id}`") from exc
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise CliError(f"the sync of {account_id} is {desc.status.name.lower()}: start it with "
                       f"`mailsync sync start {account_id}`")
    return handle


_control("pause", "Pause the account's sync (the IDLE watch stops too) until `sync resume`.")
_control("resume", "Resume a paused sync; an incremental pass runs at once.")
_control("resync", "Re-mirror every folder from the server; bodies already stored are not rewritten.")


@sync_app.command("now")
def sync_now(
    account: str = typer.Argument(..., help="account id or address"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Run an incremental pass now and print what changed per folder."""

    async def body() -> int:
        from temporalio.client import WorkflowUpdateFailedError

        from runtime.temporal import update_following_runs
        from workflows.account_sync import AccountSyncWorkflow
        from workflows.policies import failure_message

        settings = get_settings()
        account_id = await _account_id(settings, account)
        handle = await _running_handle(settings, account_id)
        try:
            result = await update_following_runs(handle, AccountSyncWorkflow.sync_now)
        except WorkflowUpdateFailedError as exc:
            raise CliError(f"sync now refused: {failure_message(exc)}") from exc
        if as_json:
            out.print_json(result.model_dump_json())
            return 0
        table = Table("folder", "new", "updated", "expunged", "note")
        for f in result.folders:
            table.add_row(f.folder, str(f.new), str(f.updated), str(f.expunged),
                          ("rebuilt " if f.rebuilt else "") + (f.error or ""))
        for name in result.folders_added:
            table.add_row(name, "", "", "", "folder added")
        for name in result.folders_removed:
            table.add_row(name, "", "", "", "folder removed")
        if table.rows:
            out.print(table)
        took = (result.finished_at - result.started_at).total_seconds() if result.finished_at else 0.0
        if result.error:
            err.print(f"[red]pass {result.seq} failed:[/red] {result.error} (the next pass retries)", highlight=False)
            return 1
        out.print(f"pass {result.seq}: {result.new} new, {result.updated} updated, {result.expunged} expunged "
                  f"in {took:.2f} s", highlight=False)
        return 0

    run(body)


@sync_app.command("history")
def sync_history(
    account: str = typer.Argument(..., help="account id or address"),
    limit: int = typer.Option(30, min=1, help="rows to show"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """The audit log of sync passes: per pass and per changed folder, counts and errors."""

    async def body() -> int:
        from store.changes import list_history

        settings = get_settings()
        account_id = await _account_id(settings, account)
        pool = await _pool(settings)
        async with pool.acquire() as conn:
            rows = [dict(r) for r in await list_history(conn, account_id, limit)]
        await pool.close()
        if as_json:
            out.print_json(json.dumps(rows, default=str))
            return 0
        table = Table("started", "took", "kind", "folder", "new", "updated", "expunged", "error")
        for r in rows:
            took = (r["finished_at"] - r["started_at"]).total_seconds()
            table.add_row(r["started_at"].strftime("%Y-%m-%d %H:%M:%S"), f"{took:.2f}s", r["kind"],
                          r["folder"] or "(pass)", str(r["new_messages"]), str(r["updated"]), str(r["expunged"]),
                          r["error"] or "")
        out.print(table)
        return 0

    run(body)


@sync_app.command("status")
def sync_status(
    account: str | None = typer.Argument(None, help="account id or address; all accounts when omitted"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Phase, counts, percent, rate and ETA of an account's sync; or a table of all accounts."""

    async def body() -> int:
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError

        from runtime.temporal import connect
        from store.accounts import list_accounts
        from workflows.account_sync import AccountSyncWorkflow, account_workflow_id

        settings = get_settings()
        client = await connect(settings)
        if account is not None:
            account_id = await _account_id(settings, account)
            handle = client.get_workflow_handle(account_workflow_id(account_id))
            try:
                desc = await handle.describe()
            except RPCError as exc:
                raise CliError(f"no sync for {account_id} yet: start one with `mailsync sync start {account_id}`") from exc
            try:
                p = await handle.query(AccountSyncWorkflow.progress, rpc_timeout=timedelta(seconds=5))
            except RPCError as exc:  # a query is answered by a worker: none is polling the task queue
                raise CliError(
                    f"the sync of {account_id} is {desc.status.name.lower()} but no worker answers: "
                    f"is `mailsync worker` running (task queue {settings.task_queue!r})?"
                ) from exc
            if as_json:
                data = p.model_dump(mode="json") | {"workflow_status": desc.status.name, "percent": p.percent}
                out.print_json(json.dumps(data))
                return 0
            out.print(f"{account_id} ({p.address}) workflow {desc.status.name.lower()}", highlight=False)
            out.print(_progress_line(p), highlight=False)
            refused = any(f.failed for f in p.folders)  # messages the server would not serve: rare, shown if any
            table = Table("folder", "role", "phase", "done", "total", "flagged", *(["not stored"] if refused else []),
                          "MB", "error")
            for f in p.folders:
                table.add_row(f.name, f.role or "", f.phase.value, str(f.done), str(f.total), str(f.flagged),
                              *([str(f.failed)] if refused else []), f"{f.bytes / 1e6:.1f}", f.error or "")
            out.print(table)
            if p.backfill or p.backfill_pending:
                done, total = sum(f.done for f in p.backfill), sum(f.total for f in p.backfill)
                out.print(f"backfill of older mail: {done}/{total} messages so far, "
                          f"{p.backfill_pending} folder(s) queued or running", highlight=False)
                older = Table("older mail in", "phase", "done", "total", "MB", "error")
                for f in p.backfill:
                    older.add_row(f.name, f.phase.value, str(f.done), str(f.total), f"{f.bytes / 1e6:.1f}", f.error or "")
                out.print(older)
            if p.last_pass is not None:
                lp = p.last_pass
                out.print(f"passes: {p.passes} (last: {lp.kind}, +{lp.new} new, {lp.updated} updated, "
                          f"{lp.expunged} removed{', error: ' + lp.error if lp.error else ''}"
                          f"{f', {p.lag_seconds:.0f} s ago' if p.lag_seconds is not None else ''})", highlight=False)
            if p.last_error:
                out.print(f"last error: {p.last_error}", highlight=False)
            if (retrying := _retrying(desc)) is not None:
                out.print(f"retrying: {retrying}", highlight=False)
            return 0
        pool = await _pool(settings)
        async with pool.acquire() as conn:
            accounts = await list_accounts(conn)
        await pool.close()
        counts: dict[str, dict[str, int]] = {}
        async for wf in client.list_workflows("WorkflowType = 'AccountSyncWorkflow'"):
            acc = wf.id.removeprefix("account-sync/")
            bucket = counts.setdefault(acc, {"running": 0, "completed": 0, "failed": 0})
            status = wf.status or WorkflowExecutionStatus.RUNNING
            key = {WorkflowExecutionStatus.RUNNING: "running", WorkflowExecutionStatus.COMPLETED: "completed"}.get(
                status, "failed")
            bucket[key] += 1
        rows = [
            {**{k: a[k] for k in ("id", "address", "status", "messages")},
             **counts.get(a["id"], {"running": 0, "completed": 0, "failed": 0})}
            for a in accounts
        ]
        if as_json:
            out.print_json(json.dumps(rows, default=str))
            return 0
        table = Table(_id_column("account", [r["id"] for r in rows]), "address", "status", "messages", "running",
                      "completed", "failed")
        for r in rows:
            table.add_row(r["id"], r["address"], r["status"], str(r["messages"]), str(r["running"]),
                          str(r["completed"]), str(r["failed"]))
        out.print(table)
        return 0

    run(body)


# ---------------------------------------------------------------- export / verify


@app.command("export")
def export(
    account: str = typer.Argument(..., help="account id or address"),
    folder: str = typer.Option(..., help="IMAP: folder name as the server spells it (INBOX in any case); "
                                        "Gmail: label name or id (INBOX, SENT, a user label)"),
    maildir: Path = typer.Option(..., help="target Maildir (created if missing)"),
) -> None:
    """Write every stored message of a folder (Gmail: a label) into a Maildir, byte-for-byte."""

    async def body() -> int:
        from ops.export import FolderNotFound, export_folder

        settings = get_settings()
        account_id = await _account_id(settings, account)
        pool = await _pool(settings)
        try:
            async with pool.acquire() as conn:
                count, size = await export_folder(conn, account_id, folder, maildir)
        except FolderNotFound as exc:
            raise CliError(str(exc)) from exc
        finally:
            await pool.close()
        out.print(f"exported {count} messages ({size / 1e6:.1f} MB) to {maildir}", highlight=False)
        return 0

    run(body)


@app.command("verify")
def verify(
    account: str = typer.Argument(..., help="account id or address"),
    window: str = typer.Option(
        "all", help="the sync's --window: only mail on or after it must be mirrored (all, 1y, 90d, a date)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Compare every message on the server with the database (IMAP: UID, sha256, flags; Gmail: ids, sha256,
    labels); exit 0 only if identical."""

    async def body() -> int:
        from store.accounts import get_account

        since = _day_option("--window", window)
        settings = get_settings()
        pool = await _pool(settings)
        try:
            async with pool.acquire() as conn:
                acc = await get_account(conn, account)
                if acc.provider == "gmail":
                    return await _verify_gmail(settings, conn, acc, as_json, since)
                return await _verify_imap(settings, conn, acc, as_json, since)
        finally:
            await pool.close()

    run(body)


async def _verify_imap(settings: Settings, conn: Any, acc: Any, as_json: bool, since: date | None) -> int:
    from ops.verify import verify_account
    from providers.imap.client import ImapSession
    from providers.imap.settings import ImapSettings

    password = _box(settings).open(acc.credentials or b"", acc.id).decode()
    async with ImapSession(ImapSettings.model_validate(acc.settings), password,
                           auth_timeout=settings.imap_auth_timeout, timeout=settings.imap_timeout) as s:
        report = await verify_account(conn, s, acc.id, since)
    t = report.totals()
    if as_json:
        out.print_json(json.dumps({"identical": report.identical,
                                   "folders": [vars(f) for f in report.folders], "totals": vars(t)}))
    else:
        table = Table("folder", "server", "database", "missing", "extra", "mismatched", "flags differ")
        for f in [*report.folders, t]:
            table.add_row(f.folder, str(f.server), str(f.database), str(f.missing), str(f.extra),
                          str(f.mismatched), str(f.flag_differences))
        out.print(table)
        if since is not None:
            out.print(f"compared: mail on or after {since} (--window); older mail on the server is not checked",
                      highlight=False)
        out.print("identical" if report.identical else "[red]NOT identical[/red]")
    return 0 if report.identical else 2


async def _verify_gmail(settings: Settings, conn: Any, acc: Any, as_json: bool, since: date | None) -> int:
    from ops.verify_gmail import verify_gmail_account
    from providers.gmail import AuthExpired, GmailSession, TokenBucket, parse_credentials

    creds = parse_credentials(json.loads(_box(settings).open(acc.credentials or b"", acc.id)))
    try:
        async with GmailSession(creds, api_endpoint=acc.settings.get("api_endpoint"),
                                batch_uri=acc.settings.get("batch_uri"), timeout=settings.imap_timeout,
                                bucket=TokenBucket.for_quota(settings.gmail_quota)) as gmail:
            report = await verify_gmail_account(conn, gmail, acc.id, since)
    except AuthExpired:
        raise CliError(f"Google refused the stored credentials of {acc.id} (revoked or expired grant): "
                       f"`mailsync account update {acc.id} --credentials FILE` stores new ones") from None
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return 0 if report.identical else 2
    table = Table("label", "server", "database", "missing", "extra", "mismatched")
    for label in report.labels:
        table.add_row(label.name, str(label.server), str(label.database), str(label.missing), str(label.extra), "")
    table.add_row("(all messages)", str(report.server), str(report.database), str(report.missing),
                  str(report.extra), str(report.mismatched))
    out.print(table)
    out.print(f"{report.label_differences} label differences, {report.thread_differences} thread differences",
              highlight=False)
    if report.unverified:
        out.print(f"{report.unverified} stored message(s) Gmail refused to serve now: not compared", highlight=False)
    if since is not None:
        out.print(f"compared: mail on or after {since} (--window); older mail in Gmail is not checked", highlight=False)
    out.print("identical" if report.identical else "[red]NOT identical[/red]")
    return 0 if report.identical else 2


# ---------------------------------------------------------------- db, dev, worker


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations (the worker also does this on start)."""

    async def body() -> int:
        from store.db import create_pool, resolve_database_url
        from store.migrate import migrate

        pool = await create_pool(resolve_database_url(get_settings()), size=1)
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        await pool.close()
        names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied)
        out.print(f"applied: {names}" if applied else "schema is up to date", highlight=False)
        return 0

    run(body)


@dev_app.command("up")
def dev_up_cmd(
    port: int = typer.Option(7233, help="Temporal frontend port"),
    ui_port: int = typer.Option(8233, help="Temporal web UI port"),
) -> None:
    """Start the Temporal dev server (SQLite file in the state dir) and the embedded PostgreSQL."""
    from runtime.dev import dev_up

    settings = get_settings()
    try:
        services = dev_up(settings, port=port, ui_port=ui_port)
    except (RuntimeError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        _exit(1)
    if not services.temporal_address.endswith(f":{port}"):
        err.print(f"already running (started earlier): --port {port} / --ui-port {ui_port} do not apply; "
                  "`mailsync dev down` first to change them", highlight=False)
    out.print(f"Temporal:   {services.temporal_address}  (namespace {settings.temporal_namespace})")
    out.print(f"Web UI:     {services.web_ui}")
    out.print(f"PostgreSQL: {services.database_url}")
    out.print(f"State dir:  {settings.state_dir}   (stop with `mailsync dev down`)")
    _exit(0)


@dev_app.command("gmail")
def dev_gmail_cmd(
    port: int = typer.Option(8085, help="port of the local Gmail API server"),
    seed_messages: int = typer.Option(500, help="sample messages in the mailbox"),
    user: str = typer.Option("me@example.test", help="the mailbox's address"),
    quota: int = typer.Option(250, help="units per second per user, enforced like Gmail's (429 beyond)"),
    push_url: str | None = typer.Option(None, help="deliver watch notifications here (the gateway's "
                                        "/webhooks/gmail?token=…)"),
) -> None:
    """Run a local Gmail API server (for trying Gmail accounts without Google) until Ctrl-C."""
    from devkit.gmail_fake.__main__ import main as fake_main

    creds_dir = get_settings().state_dir / "gmail-dev"
    argv = ["--port", str(port), "--seed-messages", str(seed_messages), "--user", user, "--quota-limit", str(quota),
            "--credentials-dir", str(creds_dir)]
    if push_url:
        argv += ["--push-url", push_url]
    err.print(f"Gmail API on http://127.0.0.1:{port}, {seed_messages} messages for {user}; then:\n"
              f"  mailsync account add gmail --credentials {creds_dir / (user + '.json')} "
              f"--api-endpoint http://127.0.0.1:{port}", highlight=False)
    _exit(fake_main(argv))


@dev_app.command("down")
def dev_down_cmd() -> None:
    """Stop what `mailsync dev up` (or `make demo`) started: Temporal, PostgreSQL, the demo's worker and Dovecot."""
    from runtime.dev import dev_down

    stopped = dev_down(get_settings())
    out.print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    _exit(0)


@app.command("gateway")
def gateway_cmd(
    host: str | None = typer.Option(None, help="listen address (default MAILSYNC_GATEWAY_HOST, 127.0.0.1)"),
    port: int | None = typer.Option(None, help="listen port (default MAILSYNC_GATEWAY_PORT, 8080)"),
) -> None:
    """Run the webhook gateway: provider push notifications and events become workflow signals."""
    from gateway.server import serve

    try:
        serve(host, port)
    except KeyboardInterrupt:
        pass
    _exit(0)


@app.command("worker")
def worker_cmd() -> None:
    """Run a worker (same as `python worker.py`)."""
    import worker

    worker.main()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
