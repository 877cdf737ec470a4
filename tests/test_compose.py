"""Static checks of docker-compose.yml, the Dockerfiles and the demo Dovecot seeding.

No Docker engine runs here, so the compose file is checked by parsing it; `docker compose config`
is tried only when the compose plugin is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOVECOT_DIR = ROOT / "docker" / "dovecot"

SERVICES = {"temporal-db", "temporal", "temporal-ui", "app-db", "worker", "dovecot", "gateway"}
APP_ENV_KEYS = {
    "DATABASE_URL",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "MAILSYNC_TASK_QUEUE",
    "MAILSYNC_SECRET_KEY",
}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    """`environment` as a dict, whether written as a mapping or as a list of KEY=VALUE."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_of(service: dict) -> dict[str, str]:
    """`depends_on` as {service: condition}, short (list) or long (mapping) syntax."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def port_specs(service: dict) -> list[tuple[str | None, str | None, str]]:
    """Published ports as (host_ip, host_port, container_port)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # long syntax
            out.append((port.get("host_ip"), str(port.get("published") or "") or None, str(port["target"])))
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            out.append((None, parts[0], parts[1]))
        else:
            out.append((None, None, parts[0]))
    return out


def image_tag(image: str) -> str | None:
    """The tag (or digest) of an image reference; None when it has neither."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]  # a registry host:port is before the last '/'
    return last.split(":", 1)[1] if ":" in last else None


# --- compose structure ---------------------------------------------------------------------


def test_all_services_exist(services: dict) -> None:
    assert SERVICES <= set(services), f"missing services: {sorted(SERVICES - set(services))}"


def test_images_are_pinned(services: dict) -> None:
    for name, svc in services.items():
        if "image" not in svc:
            assert "build" in svc, f"{name}: neither image nor build"
            continue
        tag = image_tag(svc["image"])
        assert tag, f"{name}: image {svc['image']!r} has no tag"
        assert tag != "latest", f"{name}: image {svc['image']!r} uses 'latest'"
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-db"]["image"] == "postgres:16"
    assert services["app-db"]["image"] == "postgres:16"


def test_worker_is_scalable(services: dict) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "container_name prevents --scale worker=N"
    assert not worker.get("ports"), "fixed host ports prevent --scale worker=N"
    assert worker.get("build") is not None
    assert worker["command"] == ["mailsync", "worker"]
    assert worker.get("restart") == "unless-stopped"
    assert "profiles" not in worker, "the worker must start with a plain `docker compose up`"


def test_worker_environment(services: dict) -> None:
    env = env_of(services["worker"])
    assert APP_ENV_KEYS <= set(env), f"missing: {sorted(APP_ENV_KEYS - set(env))}"
    url = urlsplit(env["DATABASE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname == "app-db", "the app must use its own database, not Temporal's"
    assert url.hostname in services
    assert url.port in (None, 5432), "inside the network the container port is used"
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_NAMESPACE"]
    assert env["MAILSYNC_TASK_QUEUE"]
    # The key is required from the operator's environment, never baked into the file.
    assert env["MAILSYNC_SECRET_KEY"].startswith("${MAILSYNC_SECRET_KEY:?"), env["MAILSYNC_SECRET_KEY"]


def test_worker_waits_for_its_dependencies(services: dict) -> None:
    deps = depends_of(services["worker"])
    assert deps.get("app-db") == "service_healthy"
    assert "temporal" in deps


def test_gateway_shares_image_and_env_and_is_opt_in(services: dict) -> None:
    worker, gateway = services["worker"], services["gateway"]
    assert env_of(gateway) == env_of(worker)
    assert gateway.get("image") == worker.get("image")
    assert gateway.get("build") == worker.get("build")
    assert gateway["command"] == ["mailsync", "gateway", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000" in [container for _, _, container in port_specs(gateway)]
    assert gateway.get("profiles") == ["gateway"], "not started by `docker compose up` until it exists"


def test_app_env_anchor_is_shared() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert re.search(r"^x-app-env:\s*&app-env\b", text, re.M)
    assert len(re.findall(r"environment:\s*\*app-env\b", text)) >= 2


def test_temporal_depends_on_its_db(services: dict) -> None:
    temporal = services["temporal"]
    assert depends_of(temporal).get("temporal-db") == "service_healthy"
    env = env_of(temporal)
    assert env["DB"] == "postgres12"
    assert env["DB_PORT"] == "5432"
    assert env["POSTGRES_SEEDS"] == "temporal-db"
    assert env["POSTGRES_USER"] == env_of(services["temporal-db"])["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == env_of(services["temporal-db"])["POSTGRES_PASSWORD"]
    assert ("7233", "7233") in [(host, container) for _, host, container in port_specs(temporal)]


def test_temporal_ui(services: dict) -> None:
    ui = services["temporal-ui"]
    env = env_of(ui)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_CORS_ORIGINS"] == "http://localhost:3000"
    assert ("8080", "8080") in [(host, container) for _, host, container in port_specs(ui)]


def test_databases_are_separate(services: dict) -> None:
    app_db, temporal_db = services["app-db"], services["temporal-db"]
    assert app_db is not temporal_db
    app_volumes = {str(v).split(":", 1)[0] for v in app_db.get("volumes") or []}
    temporal_volumes = {str(v).split(":", 1)[0] for v in temporal_db.get("volumes") or []}
    assert app_volumes and temporal_volumes, "both databases keep their data in a volume"
    assert not app_volumes & temporal_volumes, "the two databases must not share a volume"
    env = env_of(app_db)
    url = urlsplit(env_of(services["worker"])["DATABASE_URL"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    # Published for the host CLI, on loopback only.
    assert ("127.0.0.1", "5433", "5432") in port_specs(app_db)
    assert env_of(services["temporal"])["POSTGRES_SEEDS"] != url.hostname


@pytest.mark.parametrize("name", ["app-db", "temporal-db"])
def test_databases_have_healthchecks(services: dict, name: str) -> None:
    test = services[name]["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_named_volumes_are_declared(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} not declared at top level"


def test_build_contexts_have_dockerfiles(services: dict) -> None:
    built = 0
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        built += 1
        if isinstance(build, str):
            context, dockerfile = build, "Dockerfile"
        else:
            context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        context_dir = (ROOT / context).resolve()
        assert context_dir.is_dir(), f"{name}: build context {context!r} missing"
        assert (context_dir / dockerfile).is_file(), f"{name}: {dockerfile!r} missing in {context!r}"
    assert built >= 3  # worker, gateway, dovecot


def test_depends_on_targets_exist(services: dict) -> None:
    for name, svc in services.items():
        for target in depends_of(svc):
            assert target in services, f"{name} depends on unknown service {target!r}"
            assert target != name


def test_dovecot_service_and_files(services: dict) -> None:
    dovecot = services["dovecot"]
    assert ("127.0.0.1", "1143", "143") in port_specs(dovecot)
    dockerfile = DOVECOT_DIR / "Dockerfile"
    conf = DOVECOT_DIR / "dovecot.conf"
    assert dockerfile.is_file() and conf.is_file() and (DOVECOT_DIR / "seed.py").is_file()

    text = dockerfile.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim AS seed$", text, re.M)
    assert re.search(r"^FROM debian:bookworm-slim$", text, re.M)
    assert "dovecot-imapd" in text
    assert "COPY devkit/" in text and "docker/dovecot/seed.py" in text
    assert "COPY --from=seed" in text
    assert "docker/dovecot/dovecot.conf" in text

    cfg = conf.read_text(encoding="utf-8")
    for pattern in (
        r"^ssl = no$",
        r"^disable_plaintext_auth = no$",
        r"driver = passwd-file",
        r"^mail_location = maildir:/srv/mail/",
        r"port = 143$",
    ):
        assert re.search(pattern, cfg, re.M), f"dovecot.conf lacks {pattern!r}"


def test_app_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(image == "python:3.11-slim" for image in froms)
    assert "pip install --no-cache-dir ." in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the app must not run as root"
    assert re.search(r'^CMD \["mailsync", "worker"\]$', text, re.M)
    assert 'mailsync = "cli:main"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_dockerignore() -> None:
    entries = {
        line.strip().lstrip("/").removeprefix("**/").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", "__pycache__", ".state", "*.egg-info", ".pytest_cache"):
        assert required in entries, f".dockerignore lacks {required}"
    # The images are built from these: they must stay in the context.
    assert not entries & {"devkit", "docker", "pyproject.toml"}


# --- docker compose config (only with the compose plugin) ----------------------------------


def _compose_cmd() -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client binary")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        reason = ((probe.stderr or probe.stdout).strip().splitlines() or ["?"])[0][:200]
        pytest.skip(f"docker compose plugin missing ({reason})")
    return [docker, "compose", "-f", str(COMPOSE_FILE)]


def test_docker_compose_config_is_valid() -> None:
    cmd = _compose_cmd()
    env = {**os.environ, "MAILSYNC_SECRET_KEY": "dGVzdC1rZXktbm90LXNlY3JldC0wMTIzNDU2Nzg5YWI="}
    result = subprocess.run([*cmd, "config", "-q"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_docker_compose_requires_secret_key() -> None:
    cmd = _compose_cmd()
    env = {k: v for k, v in os.environ.items() if k != "MAILSYNC_SECRET_KEY"}
    result = subprocess.run([*cmd, "config", "-q"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert result.returncode != 0
    assert "MAILSYNC_SECRET_KEY" in result.stderr


# --- docker/dovecot/seed.py --------------------------------------------------------------------


def load_seed_module():
    spec = importlib.util.spec_from_file_location("dovecot_seed", DOVECOT_DIR / "seed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


def read_maildir(root: Path) -> dict[str, list[tuple[bytes, frozenset[str], int]]]:
    """Parse a Maildir++ tree back into {folder: [(raw, flags, mtime_ns), ...]} in file-name order."""
    assert (root / "subscriptions").is_file()
    sub_lines = (root / "subscriptions").read_text(encoding="ascii").splitlines()
    assert sub_lines[:2] == ["V\t2", ""]
    folders: dict[str, Path] = {"INBOX": root}
    for line in sub_lines[2:]:
        if line != "INBOX":
            folders[line.replace("\t", "/")] = root / ("." + line.replace("\t", "."))
    on_disk = {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(".")}
    assert on_disk == {p.name for name, p in folders.items() if name != "INBOX"}, "every folder subscribed"

    result = {}
    for name, path in folders.items():
        for sub in ("cur", "new", "tmp"):
            assert (path / sub).is_dir(), f"{path / sub} missing"
        assert not any((path / "tmp").iterdir()) and not any((path / "new").iterdir())
        if name != "INBOX":
            assert (path / "maildirfolder").is_file()
        keywords = {}
        if (path / "dovecot-keywords").is_file():
            for line in (path / "dovecot-keywords").read_text(encoding="ascii").splitlines():
                idx, kw = line.split(" ", 1)
                keywords["abcdefghijklmnopqrstuvwxyz"[int(idx)]] = kw
        letters_to_flag = {v: k for k, v in FLAG_LETTERS.items()} | keywords
        messages = []
        for file in sorted((path / "cur").iterdir(), key=lambda p: p.name):
            base, info = file.name.split(":2,", 1)
            assert list(info) == sorted(info), f"{file.name}: flag letters not in ASCII order"
            raw = file.read_bytes()
            assert f",S={len(raw)}" in base, f"{file.name}: S= is not the file size"
            messages.append((raw, frozenset(letters_to_flag[c] for c in info), file.stat().st_mtime_ns))
        result[name] = messages
    return result


class FakeSeedMessage(NamedTuple):
    folder: str
    raw: bytes
    flags: tuple[str, ...]
    internaldate: datetime


def test_seed_writer_layout(tmp_path: Path) -> None:
    """The Maildir++ writer on hand-made messages (runs without devkit.corpus)."""
    seed = load_seed_module()
    t0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    msgs = [
        FakeSeedMessage("INBOX", b"Subject: a\r\n\r\nA\r\n", ("\\Seen", "\\Flagged"), t0),
        FakeSeedMessage("Sent", b"Subject: b\n\nbare LF\x00NUL\n", ("\\Answered", "$Forwarded", "\\Seen"), t0 + timedelta(days=1)),
        FakeSeedMessage("Archive/2023", b"Subject: c\r\n\r\nC\r\n", (), datetime(2023, 6, 1, 12, 0)),  # naive = UTC
        FakeSeedMessage("INBOX", b"Subject: d\r\n\r\nD\r\n", ("\\Draft", "\\Deleted", "\\Recent"), t0 - timedelta(days=3)),
    ]
    target = tmp_path / "demo"
    counts = seed.write_maildir(msgs, target)
    assert counts == {"INBOX": 2, "Sent": 1, "Archive/2023": 1}
    assert (target / ".Archive.2023" / "cur").is_dir()
    got = read_maildir(target)
    for folder in counts:
        expected = [
            (m.raw, frozenset(m.flags) - {"\\Recent"}, seed.timestamp_ns(m.internaldate))
            for m in msgs
            if m.folder == folder
        ]
        assert got[folder] == expected, folder
    with pytest.raises(FileExistsError):
        seed.write_maildir(msgs, target)
    assert seed.imap_utf7_encode("Entwürfe & Co") == "Entw&APw-rfe &- Co"
    assert seed.timestamp_ns(t0) == int(t0.timestamp()) * 10**9
    first = sorted((target / "cur").iterdir())[0]
    assert first.stat().st_mtime == t0.timestamp()
    with pytest.raises(ValueError):
        seed.write_maildir([FakeSeedMessage("a.b", b"x", (), t0)], tmp_path / "bad")


def test_seed_main_writes_corpus_maildir(tmp_path: Path) -> None:
    """docker/dovecot/seed.py main() on the real generator, as the image build runs it."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    corpus = pytest.importorskip(
        "devkit.corpus", reason="devkit/corpus.py (generate_sample_mailbox) is not written yet"
    )
    seed = load_seed_module()
    target = tmp_path / "demo"
    counts = seed.main(target)

    messages = list(corpus.generate_sample_mailbox(seed=0))
    assert messages, "the sample mailbox is empty"
    expected: dict[str, list] = {"INBOX": []}
    for m in messages:
        expected.setdefault("INBOX" if m.folder.upper() == "INBOX" else m.folder, []).append(m)
    assert counts == {folder: len(ms) for folder, ms in expected.items()}

    # Non-ASCII folder names are stored in modified UTF-7: map them back for the comparison.
    got = read_maildir(target)
    encoded = {"/".join(seed.imap_utf7_encode(p) for p in name.split("/")): name for name in expected}
    got = {encoded.get(name, name): ms for name, ms in got.items()}
    assert set(got) == set(expected)
    for folder, ms in expected.items():
        want = [(bytes(m.raw), frozenset(m.flags) - {"\\Recent"}, seed.timestamp_ns(m.internaldate)) for m in ms]
        assert got[folder] == want, folder
