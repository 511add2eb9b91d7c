"""A private Postfix MTA for integration and chaos tests: a strict relay on loopback.

This module owns two things: installing the Debian `postfix` package on a test machine without
configuring or starting the system mail service (`ensure_postfix_installed`, through
tests/debian.py), and running one
throw-away Postfix instance per test (`PostfixServer`) whose every file lives under a folder the
caller hands in. The instance listens on 127.0.0.1 only, demands STARTTLS and a fully-qualified
HELO like a production relay, and forwards everything it accepts to a next hop the test runs
(usually `acme_cli.smtp_sink.MailSink`). Every postfix command gets `-c <config_dir>` and an
environment without MAIL_*, so nothing here can reach the system instance in /etc/postfix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import trustme

from acme_cli.embedded import LOCALHOST, free_port
from tests.debian import PackageUnavailableError, ensure_installed, install_hint

__all__ = [
    "MTA_HOSTNAME",
    "PostfixError",
    "PostfixServer",
    "PostfixUnavailableError",
    "ensure_postfix_installed",
    "postfix_version",
]

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
# Installed without configuring the system mail service.
_PRESEED = "postfix postfix/main_mailer_type select No configuration\n"
INSTALL_HINT = "install it without configuring the system mail service: " + install_hint(
    ["postfix"], _PRESEED
)

_COMMAND_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.05


class PostfixUnavailableError(RuntimeError):
    """Postfix is not installed and could not be installed here; the message says how to."""


def _command_env() -> dict[str, str]:
    """Our environment minus MAIL_CONFIG and friends: with them, a postfix command run without
    `-c` would act on whatever instance the variable names instead of the one we mean."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAIL_")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env["LC_ALL"] = "C"  # apt's and postfix's messages are matched on below
    return env


def _run(
    args: Sequence[str | Path],
    *,
    timeout_s: float = _COMMAND_TIMEOUT_S,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env if env is not None else _command_env(),
        check=False,
    )


def postfix_version() -> str:
    """The installed Postfix version, e.g. "3.7.11"."""
    # -d: the compiled-in default, so this works before any main.cf exists.
    result = _run([POSTCONF, "-d", "-h", "mail_version"])
    if result.returncode != 0 or not result.stdout.strip():
        raise PostfixUnavailableError(
            f"`postconf -d mail_version` failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout.strip()


def _stop_system_instance() -> None:
    """The package must not leave the system's master running: ours would be fine beside it
    (other port, other queue), but a stray MTA on port 25 is not what a test run may leave."""
    status = _run([POSTFIX, "status"])
    if status.returncode == 0:
        _run([POSTFIX, "stop"])


def ensure_postfix_installed() -> None:
    """Install the `postfix` package if missing (root + apt only), leaving the system service
    unconfigured and stopped; raise PostfixUnavailableError if that is not possible."""
    try:
        ensure_installed(POSTFIX.exists, ["postfix"], preseed=_PRESEED, after=_stop_system_instance)
    except PackageUnavailableError as exc:
        raise PostfixUnavailableError(f"Postfix is not installed: {exc}") from None
    postfix_version()


MTA_HOSTNAME = "mta.acme.test"
# Loopback is "our network", allowed to relay, unless the relay policy service says otherwise.
_TRUSTED_NETWORKS = "127.0.0.0/8"
_PROBE_HELO = "probe.acme.test"
_READY_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 15.0
_SOCKET_TIMEOUT_S = 5.0
_LOG_TAIL_LINES = 30
# The queue folders a message lives in between acceptance and delivery (or bounce).
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

_MAIN_CF = """\
# Written by tests/postfix.py for one test instance; the system's /etc/postfix is never used.
compatibility_level = 3.6
queue_directory = {queue_dir}
data_directory = {data_dir}
maillog_file = {maillog}
maillog_file_prefixes = {root}
myhostname = {hostname}
myorigin = $myhostname
mydestination =
relay_domains =
alias_maps =
alias_database =
local_recipient_maps =
biff = no
readme_directory = no
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = {networks}

# Everything accepted goes to the test's sink at once: no DNS, no TLS, retries within seconds.
relayhost = [{host}]:{next_hop_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_peername_lookup = no

# Strict like a production relay.
smtpd_tls_security_level = encrypt
smtpd_tls_chain_files = {chain}
smtpd_helo_required = yes
smtpd_helo_restrictions = reject_non_fqdn_helo_hostname
# The policy service (Postfix's policy delegation, SMTPD_POLICY_README) is asked at every RCPT:
# it answers DUNNO, or, while the test has "misconfigured" the relay, the restriction
# reject_unauth_destination, so that Postfix itself refuses with its own "Relay access denied"
# in every session, including the ones a client opened before (as a changed IP allowlist or
# lost credentials would on a real relay).
smtpd_relay_restrictions = check_policy_service inet:{host}:{policy_port},
    permit_mynetworks, reject_unauth_destination
smtpd_data_restrictions = reject_unauth_pipelining
# "yes" only means "normalize" here (a bare LF is taken as CRLF and the mail accepted).
smtpd_forbid_bare_newline = reject
# The default exclusion is $mynetworks, i.e. every test client: check them all.
smtpd_forbid_bare_newline_exclusions =
"""

# Only the services a relay without local delivery uses; chroot off everywhere (column 5).
_MASTER_CF = """\
# service  type  private unpriv chroot wakeup maxproc command + args
{listen} inet n - n - - smtpd
cleanup    unix  n       -      n      -      0       cleanup
qmgr       unix  n       -      n      300    1       qmgr
tlsmgr     unix  -       -      n      1000?  1       tlsmgr
rewrite    unix  -       -      n      -      -       trivial-rewrite
bounce     unix  -       -      n      -      0       bounce
defer      unix  -       -      n      -      0       bounce
trace      unix  -       -      n      -      0       bounce
verify     unix  -       -      n      -      1       verify
flush      unix  n       -      n      1000?  0       flush
proxymap   unix  -       -      n      -      -       proxymap
smtp       unix  -       -      n      -      -       smtp
relay      unix  -       -      n      -      -       smtp
showq      unix  n       -      n      -      -       showq
error      unix  -       -      n      -      -       error
retry      unix  -       -      n      -      -       error
discard    unix  -       -      n      -      -       discard
anvil      unix  -       -      n      -      1       anvil
scache     unix  -       -      n      -      1       scache
postlog    unix-dgram n  -      n      -      1       postlogd
"""


class PostfixError(RuntimeError):
    """A private Postfix instance failed to check, start, reload or stop; the message carries
    the command's output and the tail of the instance's maillog."""


class RawSmtpSession:
    """Just enough of an SMTP client over a blocking socket to probe the server and to send
    what a real client library never would (a bare LF, say). Replies come back as text, the
    lines of a multi-line reply joined with newlines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self._buffer = b""

    def reply(self) -> str:
        lines: list[str] = []
        while True:
            while b"\r\n" not in self._buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    so_far = "\n".join([*lines, self._buffer.decode(errors="replace")])
                    raise ConnectionError(f"server closed the connection after {so_far!r}")
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\r\n")
            text = line.decode("utf-8", errors="replace")
            lines.append(text)
            if text[3:4] != "-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str) -> str:
        reply = self.command("STARTTLS")
        if not reply.startswith("220"):
            raise PostfixError(f"STARTTLS refused: {reply}")
        # Nothing may be buffered past the 220: that would be plaintext injected into TLS.
        if self._buffer:
            raise PostfixError(f"data after the STARTTLS reply: {self._buffer!r}")
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        return reply


def _pids_with_env(name: str, value: str) -> list[int]:
    """The processes whose environment has name=value: how we find every process of one
    instance (postfix exports MAIL_CONFIG and its daemons inherit it) and no other's."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"
    return True


class _RelayPolicy(socketserver.ThreadingTCPServer):
    """A Postfix policy service on 127.0.0.1: DUNNO (let the other restrictions decide), or,
    while `deny` is set, the restriction `reject_unauth_destination` for every recipient."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, *, deny: bool) -> None:
        super().__init__((LOCALHOST, port), _PolicyHandler)
        self.deny = deny
        self._thread = threading.Thread(target=self.serve_forever, name="relay-policy")

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _PolicyHandler(socketserver.StreamRequestHandler):
    """One connection from Postfix: requests of name=value lines ending with an empty line,
    each answered `action=...` and an empty line."""

    server: _RelayPolicy

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            if line.strip():
                continue  # an attribute of the request; only its end matters here
            action = "reject_unauth_destination" if self.server.deny else "DUNNO"
            self.wfile.write(f"action={action}\n\n".encode())
            self.wfile.flush()


class PostfixServer:
    """A private Postfix on 127.0.0.1:`port`, relaying what it accepts to 127.0.0.1:
    `next_hop_port`, with every file under `root` (a folder the caller made, e.g. with
    tempfile.mkdtemp, and removes after `stop()`).

    `start()`, `stop()`, `deny_relay()` and `allow_relay()` block (subprocesses, polling):
    from async code call them via `asyncio.to_thread`. All need root, as Postfix does.
    """

    def __init__(
        self,
        root: Path,
        *,
        next_hop_port: int,
        port: int | None = None,
        hostname: str = MTA_HOSTNAME,
    ) -> None:
        self.root = root
        self.next_hop_port = next_hop_port
        self.hostname = hostname
        self._port = port if port is not None else free_port()
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        self.data_dir = root / "data"
        self.maillog = root / "maillog"
        self._ca_path = root / "ca.pem"
        self._chain_path = self.config_dir / "tls-chain.pem"
        self._started = False
        # The policy service's port is written into main.cf once; a restart keeps it, and
        # keeps the relay denied or allowed as it was.
        self._policy_port = free_port()
        self._deny = False
        self._policy: _RelayPolicy | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The notifier's SMTP URL for this server (STARTTLS required, certificate verified
        against `ca_path`)."""
        return f"smtp://{LOCALHOST}:{self._port}?starttls=true"

    @property
    def ca_path(self) -> Path:
        """The PEM of the throw-away CA that signed the server's certificate (for SSL_CERT_FILE
        or `ssl.create_default_context(cafile=...)`)."""
        return self._ca_path

    def tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate and nothing else."""
        return ssl.create_default_context(cafile=str(self._ca_path))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the configuration (on the first start only), check it, start the master and
        return once the port answers with an SMTP greeting."""
        if self._started:
            return
        if os.geteuid() != 0:
            raise PostfixUnavailableError("a private Postfix instance must be started as root")
        self._prepare()
        self._postfix("check")
        self._started = True  # from here on stop() has something to clean up
        try:
            self._policy = _RelayPolicy(self._policy_port, deny=self._deny)
            self._policy.start()
            self._postfix("start", timeout_s=_READY_TIMEOUT_S)
            self._wait_until_ready(time.monotonic() + _READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop this instance and every process it started; idempotent. Never touches another
        instance: the command gets `-c`, and the fallback kills only our own processes."""
        if not self._started:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            # `postfix stop` waits for the master itself (polling once a second).
            _run([POSTFIX, "-c", self.config_dir, "stop"], timeout_s=_STOP_TIMEOUT_S)
        master = self._master_pid()
        if master is not None:
            self._kill([master])
        self._kill(self._instance_pids())
        if self._policy is not None:
            self._policy.stop()
            self._policy = None
        self._started = False

    def deny_relay(self) -> None:
        """Misconfigure the relay: from now on every RCPT, in every session (open ones too),
        gets Postfix's own `554 5.7.1 <addr>: Relay access denied`."""
        self._set_relaying(False)

    def allow_relay(self) -> None:
        """Undo deny_relay(): every session may relay again."""
        self._set_relaying(True)

    @contextlib.contextmanager
    def raw_session(self, helo: str | None = "client.acme.test") -> Iterator[RawSmtpSession]:
        """A blocking session past the greeting; with `helo`, also past EHLO, STARTTLS and the
        second EHLO (ready for MAIL FROM). A normal exit sends QUIT; every exit closes."""
        raw = socket.create_connection((LOCALHOST, self._port), timeout=_SOCKET_TIMEOUT_S)
        session = RawSmtpSession(raw)
        try:
            greeting = session.reply()
            if not greeting.startswith("220"):
                raise PostfixError(f"unexpected greeting: {greeting}")
            if helo is not None:
                session.command(f"EHLO {helo}")
                session.starttls(self.tls_context(), LOCALHOST)
                session.command(f"EHLO {helo}")
            yield session
            with contextlib.suppress(OSError):
                session.command("QUIT")
        finally:
            # After STARTTLS session.sock is the TLS wrapper; closing it closes `raw` too.
            session.sock.close()
            raw.close()

    def wait_until_queue_empty(self, timeout_s: float = 10.0) -> None:
        """Wait until Postfix holds no message (every accepted one was delivered or bounced):
        after that, nothing more can reach the next hop."""
        deadline = time.monotonic() + timeout_s
        while True:
            queued = [
                path.name
                for folder in _QUEUES
                if (self.queue_dir / folder).is_dir()
                for path in (self.queue_dir / folder).rglob("*")
                if path.is_file()
            ]
            if not queued:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Postfix still holds {queued} after {timeout_s:g} s\n"
                    f"--- maillog tail ---\n{self.maillog_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def maillog_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.maillog.read_text(errors="replace")
        except OSError as exc:
            return f"(no maillog: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _prepare(self) -> None:
        # The daemons run as the `postfix` user and open files by absolute path: every folder
        # down to the queue must be searchable by them. mkdtemp() makes `root` 0700.
        self.root.chmod(0o755)
        for folder in self.root.parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                raise PostfixError(
                    f"{folder} is not searchable by other users, so Postfix's daemons cannot "
                    f"reach {self.root}; use a folder from tempfile.mkdtemp()"
                )
        # Root-owned and not group/world writable, or `postfix check` complains; postfix
        # creates the queue's subfolders (owned by `postfix`) and data_directory itself.
        self.config_dir.mkdir(mode=0o755, exist_ok=True)
        self.queue_dir.mkdir(mode=0o755, exist_ok=True)
        main_cf = self.config_dir / "main.cf"
        if main_cf.exists():
            # A restart (stop, start) keeps the certificate clients already trust, the port
            # and any deny_relay(): it models a relay restart, not a new relay.
            return
        self._write_tls()
        main_cf.write_text(
            _MAIN_CF.format(
                queue_dir=self.queue_dir,
                data_dir=self.data_dir,
                maillog=self.maillog,
                root=self.root,
                hostname=self.hostname,
                host=LOCALHOST,
                networks=_TRUSTED_NETWORKS,
                policy_port=self._policy_port,
                next_hop_port=self.next_hop_port,
                chain=self._chain_path,
            )
        )
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(listen=f"{LOCALHOST}:{self._port}")
        )
        self._backdate_main_cf()

    def _write_tls(self) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert(LOCALHOST, "localhost", self.hostname)
        ca.cert_pem.write_to_path(str(self._ca_path))
        # Key first, then the chain: the order smtpd_tls_chain_files wants. smtpd reads it as
        # root before dropping privileges, so 0600 is enough.
        self._chain_path.touch(mode=0o600)
        cert.private_key_and_cert_chain_pem.write_to_path(str(self._chain_path))

    def _postfix(self, *args: str, timeout_s: float = _COMMAND_TIMEOUT_S) -> str:
        command: list[str | Path] = [POSTFIX, "-c", self.config_dir, *args]
        result = _run(command, timeout_s=timeout_s)
        if result.returncode != 0:
            raise PostfixError(
                f"`postfix -c {self.config_dir} {' '.join(args)}` failed ({result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()}\n"
                f"--- maillog tail ---\n{self.maillog_tail()}"
            )
        return result.stdout + result.stderr

    def _postconf(self, setting: str) -> None:
        result = _run([POSTCONF, "-c", self.config_dir, "-e", setting])
        if result.returncode != 0:
            raise PostfixError(f"`postconf -e {setting}` failed: {result.stderr.strip()}")
        self._backdate_main_cf()

    def _backdate_main_cf(self) -> None:
        """Postfix will not read a main.cf modified within the last second or two: every
        program (postfix check, reload, each new smtpd) polls until it is older, 2 s each
        time. The file is written whole (postconf -e renames a temporary file), so there is
        no half-written file for that guard to protect us from; an older mtime skips it."""
        past = time.time() - 10
        os.utime(self.config_dir / "main.cf", (past, past))

    def _wait_until_ready(self, deadline: float) -> None:
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOCALHOST, self._port), timeout=1.0) as raw:
                    session = RawSmtpSession(raw)
                    greeting = session.reply()
                    if greeting.startswith("220"):
                        session.command("QUIT")
                        return
                    last_error = f"greeting {greeting!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(_POLL_INTERVAL_S)
        raise PostfixError(
            f"Postfix on {LOCALHOST}:{self._port} gave no SMTP greeting within "
            f"{_READY_TIMEOUT_S:g} s ({last_error})\n--- maillog tail ---\n{self.maillog_tail()}"
        )

    def _probe_rcpt(self) -> str:
        """The RCPT reply a new session gets right now (no DATA: nothing is queued)."""
        with self.raw_session(_PROBE_HELO) as session:
            session.command("MAIL FROM:<relay-probe@acme.test>")
            return session.command("RCPT TO:<relay-probe@example.org>")

    def _set_relaying(self, relaying: bool) -> None:
        self._deny = not relaying
        if self._policy is None:
            return  # applied at the next start
        self._policy.deny = self._deny
        reply = self._probe_rcpt()
        if reply.startswith("250") != relaying:
            raise PostfixError(
                f"relaying {'allowed' if relaying else 'denied'}, yet a new session gets "
                f"{reply!r}\n--- maillog tail ---\n{self.maillog_tail()}"
            )

    def _master_pid(self) -> int | None:
        """The master's pid from its pid file, if that process is still ours."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid in self._instance_pids() else None

    def _instance_pids(self) -> list[int]:
        return _pids_with_env("MAIL_CONFIG", str(self.config_dir))

    def _kill(self, pids: list[int]) -> None:
        """SIGTERM, then SIGKILL what is left, each with a bounded wait."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [pid for pid in pids if _alive(pid)]
            if not alive:
                return
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + _STOP_TIMEOUT_S / 3
            while time.monotonic() < deadline and any(_alive(pid) for pid in alive):
                time.sleep(_POLL_INTERVAL_S)
        still = [pid for pid in pids if _alive(pid)]
        if still:
            raise PostfixError(f"Postfix processes {still} survived SIGKILL")
