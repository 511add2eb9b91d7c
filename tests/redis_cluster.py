"""A real Redis Cluster on loopback for the tests: six Debian redis-server 7.0 nodes, three
masters with one replica each, formed with plain cluster commands (no redis-cli), that a test
can crash (`kill9`), watch fail over (`wait_promoted`) and bring back (`restart`).

Each node is an `EmbeddedRedis` (so a child of this process that dies with it, started and
stopped by pid) on free loopback ports, with its own folder: data (AOF, `appendfsync
everysec`, no RDB) and `nodes.conf`, which is how a restarted node knows who it was and rejoins
as a replica of whoever took over its slots. `EmbeddedRedis` takes no extra server options, so
each node's binary is a two-line launcher that `exec`s the Debian server with the node's
cluster config file first (same pid, same death signal). The cluster bus gets a port of its
own (`cluster-port`) rather than the default port + 10000, which could land in the kernel's
ephemeral range.

The views (`master_of_slot`, `wait_promoted`...) are read from CLUSTER SHARDS of live nodes;
right after a kill they are what the cluster believes, which lags the truth by the node timeout.
Every wait is bounded and polls; the blocking methods may be called from a worker thread
(`asyncio.to_thread`): `EmbeddedRedis` forks every node from its long-lived spawner thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from acme_cli.embedded import LOCALHOST, EmbeddedRedis, free_port, log_tail

__all__ = ["CLUSTER_SLOTS", "ClusterFormationError", "LocalRedisCluster", "RedisNode"]

CLUSTER_SLOTS = 16384
#: How long a node may be unreachable before it is failed over: failover then takes about
#: this plus the replica's election delay (0.5-1 s).
NODE_TIMEOUT_MS = 1500
_POLL_S = 0.05
_CLIENT_TIMEOUT_S = 1.0


class ClusterFormationError(RuntimeError):
    """The cluster did not reach the state asked for in time; the message says what it saw."""


@dataclass(eq=False)
class RedisNode:
    """One node: where it listens, its process while it runs, and its permanent cluster id."""

    name: str
    host: str
    port: int
    bus_port: int
    server: EmbeddedRedis = field(repr=False)
    #: The running server's pid (from its own INFO); None while it is down.
    pid: int | None = None
    #: The cluster node id (kept in nodes.conf, so the same across restarts).
    node_id: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.pid is not None and self.server.running

    @property
    def role(self) -> str:
        """What the node says it is now (ROLE): "master", "slave", or "down"."""
        if not self.running:
            return "down"
        try:
            with self.client() as client:
                return str(client.execute_command("ROLE")[0])
        except RedisError:
            return "down"

    def client(self) -> redis.Redis:
        """A plain (not cluster-aware) client of this node alone, answering str."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            decode_responses=True,
            socket_timeout=_CLIENT_TIMEOUT_S,
            socket_connect_timeout=_CLIENT_TIMEOUT_S,
        )

    def shards(self) -> list[Shard]:
        """This node's view of the cluster (CLUSTER SHARDS)."""
        with self.client() as client:
            return [_shard(raw) for raw in client.execute_command("CLUSTER", "SHARDS")]

    def cluster_info(self) -> dict[str, str]:
        with self.client() as client:
            text = str(client.execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))


@dataclass(frozen=True)
class ShardNode:
    node_id: str
    port: int
    role: str
    health: str


@dataclass(frozen=True)
class Shard:
    #: Inclusive (start, end) ranges.
    slots: tuple[tuple[int, int], ...]
    nodes: tuple[ShardNode, ...]

    def covers(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)

    @property
    def master(self) -> ShardNode | None:
        return next((n for n in self.nodes if n.role == "master"), None)

    @property
    def replicas(self) -> tuple[ShardNode, ...]:
        return tuple(n for n in self.nodes if n.role == "replica")


def _pairs(reply: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """A map reply as a dict: RESP3 (and redis-py's RESP2 parsing, in some versions) gives a
    map already, plain RESP2 a flat [key, value, ...] list."""
    if isinstance(reply, Mapping):
        return {str(key): value for key, value in reply.items()}
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def _shard(raw: Mapping[str, Any] | Sequence[Any]) -> Shard:
    fields = _pairs(raw)
    flat = [int(s) for s in fields["slots"]]
    nodes = [_pairs(node) for node in fields["nodes"]]
    return Shard(
        slots=tuple(zip(flat[::2], flat[1::2], strict=True)),
        nodes=tuple(
            ShardNode(str(n["id"]), int(n["port"]), str(n["role"]), str(n["health"])) for n in nodes
        ),
    )


def _launcher(folder: Path, binary: Path, config: Path) -> Path:
    """A redis-server that reads `config` before its command-line options, as the same process."""
    script = folder / "redis-server"
    script.write_text(f'#!/bin/sh\nexec "{binary}" "{config}" "$@"\n')
    script.chmod(0o755)
    return script


class LocalRedisCluster:
    """`masters` masters with `replicas_per_master` replicas each, all on 127.0.0.1, under
    `folder`, from the redis-server `binary` (7.0+: CLUSTER SHARDS and ADDSLOTSRANGE)."""

    def __init__(
        self,
        folder: Path,
        binary: Path,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        self.folder = Path(folder).absolute()
        self.binary = Path(binary).absolute()
        self.node_timeout_ms = node_timeout_ms
        self._masters = masters
        self._replicas = replicas_per_master
        self.nodes: list[RedisNode] = []
        self._last_kill_at: float | None = None

    # --- what tests use ---------------------------------------------------------------------

    @property
    def seeds(self) -> list[tuple[str, int]]:
        """Every node's (host, port), in node order (the first masters first)."""
        return [(node.host, node.port) for node in self.nodes]

    @property
    def seed_url(self) -> str:
        """`redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`: every node is a seed, so a client
        given it finds the cluster whichever node a test has killed."""
        return "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in self.seeds)

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def master_of_slot(self, slot: int) -> RedisNode:
        """The node the cluster (a live node's CLUSTER SHARDS) says serves `slot` as master."""
        for shard in self._any_view():
            if shard.covers(slot) and shard.master is not None:
                return self.node(shard.master.port)
        raise ClusterFormationError(f"no master serves slot {slot}")

    def master_of_key(self, key: str | bytes) -> RedisNode:
        return self.master_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def replicas_of(self, master: RedisNode) -> list[RedisNode]:
        """The replicas a live node's view gives `master`."""
        for shard in self._any_view():
            if shard.master is not None and shard.master.port == master.port:
                return [self.node(replica.port) for replica in shard.replicas]
        return []

    def masters(self) -> list[RedisNode]:
        """The running nodes that say they are masters now."""
        return [node for node in self.nodes if node.role == "master"]

    def kill9(self, node: RedisNode) -> None:
        """SIGKILL the node by pid, like a crash. What it acknowledged is in its AOF (written
        before the reply; `everysec` fsync only matters to an OS crash), so a restart keeps it."""
        if node.pid is None:
            raise ValueError(f"{node.name} is not running")
        os.kill(node.pid, signal.SIGKILL)
        self._last_kill_at = time.monotonic()
        node.server.kill()  # reaps it (the pid cannot be reused before)
        node.pid = None

    def wait_promoted(self, slots: Iterable[int], timeout_s: float = 30) -> float:
        """Waits until running nodes serve every one of `slots` as masters, each by its own
        view, with cluster_state:ok; returns the seconds that took since the last `kill9` not
        measured yet (else since this call). Before returning it also waits (within the same
        timeout) until every running node's view agrees, so `master_of_slot` is current."""
        wanted = sorted(set(slots))
        deadline = time.monotonic() + timeout_s
        started = self._last_kill_at if self._last_kill_at is not None else time.monotonic()
        self._last_kill_at = None

        def served() -> bool:
            return all(self._served_by_live_master(slot) for slot in wanted)

        self._wait(served, timeout_s, f"live master for slots {_ranges(wanted)}")
        took = time.monotonic() - started
        agreed = f"every view naming the new master of slots {_ranges(wanted)}"
        self._wait(lambda: self._views_agree(wanted), deadline - time.monotonic(), agreed)
        return took

    def restart(self, node: RedisNode, timeout_s: float = 30) -> None:
        """Starts the node again from its folder (AOF, nodes.conf) and waits until it is a
        replica whose link to its master is up, and the cluster is whole again."""
        deadline = time.monotonic() + timeout_s
        node.server.start(start_timeout_s=timeout_s)
        node.pid = int(node.info("server")["process_id"])

        def replicating() -> bool:
            info = node.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        self._wait(replicating, deadline - time.monotonic(), f"{node.name} a linked replica")
        self.wait_healthy(max(1.0, deadline - time.monotonic()))

    def heal(self, timeout_s: float = 30) -> None:
        """Restarts every node that is down (each rejoins as a replica) and waits until the
        cluster is healthy: what a test leaves behind, put right for the next one."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if not node.running:
                self.restart(node, max(1.0, deadline - time.monotonic()))
        self.wait_healthy(max(1.0, deadline - time.monotonic()))

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Waits until every running node reports cluster_state:ok and sees every slot
        covered by an online master with `replicas_per_master` online replicas."""
        self._wait(self._healthy, timeout_s, "a healthy cluster")

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> LocalRedisCluster:
        """Starts the nodes and forms the cluster; everything is stopped again on failure."""
        deadline = time.monotonic() + timeout_s
        try:
            self._start_nodes(deadline)
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15) -> None:
        """SIGTERM to every running node (by pid, all first, so they shut down together),
        then waits for each; SIGKILL for one still there after `timeout_s`."""
        for node in self.nodes:
            if node.running and node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGTERM)
        for node in self.nodes:
            node.server.stop(stop_timeout_s=timeout_s)  # waits for the same pid; kills after
            node.pid = None

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- forming ----------------------------------------------------------------------------

    def _start_nodes(self, deadline: float) -> None:
        count = self._masters * (1 + self._replicas)
        for index in range(count):
            folder = self.folder / f"node{index}"
            folder.mkdir(parents=True, exist_ok=True)
            port, bus_port = free_port(), free_port()
            config = folder / "cluster.conf"
            config.write_text(
                "cluster-enabled yes\n"
                f"cluster-config-file {folder / 'nodes.conf'}\n"
                f"cluster-node-timeout {self.node_timeout_ms}\n"
                f"cluster-port {bus_port}\n"
                "repl-diskless-sync-delay 0\n"
            )
            server = EmbeddedRedis(
                folder / "data",
                port=port,
                appendonly=True,
                binary=_launcher(folder, self.binary, config),
            )
            self.nodes.append(RedisNode(f"node{index}", LOCALHOST, port, bus_port, server))
        for node in self.nodes:
            node.server.start(start_timeout_s=max(1.0, deadline - time.monotonic()))
            node.pid = int(node.info("server")["process_id"])
            with node.client() as client:
                node.node_id = str(client.execute_command("CLUSTER", "MYID"))

    def _form(self, deadline: float) -> None:
        masters = self.nodes[: self._masters]
        for index, node in enumerate(self.nodes):
            with node.client() as client:
                # Distinct epochs up front, as redis-cli does: no collision to resolve later.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for (start, end), master in zip(_slot_ranges(len(masters)), masters, strict=True):
            with master.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)
        first = self.nodes[0]
        with first.client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
        count = len(self.nodes)

        def all_known() -> bool:
            return all(
                sum(len(shard.nodes) for shard in node.shards()) == count for node in self.nodes
            )

        self._wait(all_known, deadline - time.monotonic(), f"every node knowing all {count}")
        for index, replica in enumerate(self.nodes[self._masters :]):
            master = masters[index % len(masters)]
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self._wait(self._healthy, deadline - time.monotonic(), "a healthy cluster")

    # --- waiting ----------------------------------------------------------------------------

    def _any_view(self) -> list[Shard]:
        errors: list[str] = []
        for node in self.nodes:
            if not node.running:
                continue
            try:
                return node.shards()
            except RedisError as exc:
                errors.append(f"{node.name}: {exc}")
        raise ClusterFormationError(f"no live node answered CLUSTER SHARDS: {errors}")

    def _served_by_live_master(self, slot: int) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            try:
                mine = [
                    s
                    for s in node.shards()
                    if s.covers(slot) and s.master is not None and s.master.port == node.port
                ]
                if mine and node.cluster_info().get("cluster_state") == "ok":
                    return True
            except RedisError:
                continue
        return False

    def _healthy(self) -> bool:
        if not all(node.running for node in self.nodes):
            return False
        for node in self.nodes:
            if node.cluster_info().get("cluster_state") != "ok":
                return False
            shards = [shard for shard in node.shards() if shard.slots]
            if len(shards) != self._masters or _covered(shards) != CLUSTER_SLOTS:
                return False
            for shard in shards:
                # A replica's health stays "loading" while the offset gossiped for it is 0,
                # which, with nothing written, lasts until the master's first replication ping
                # (10 s): so "not failed" here, and the replica's own link below.
                master, replicas = shard.master, [r for r in shard.replicas if not _failed(r)]
                if master is None or _failed(master) or len(replicas) != self._replicas:
                    return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def _views_agree(self, slots: Sequence[int]) -> bool:
        """Every running node's view names the same live master for each of `slots`."""
        for slot in slots:
            ports = set()
            for node in self.nodes:
                if node.running:
                    masters = [s.master for s in node.shards() if s.covers(slot)]
                    if len(masters) != 1 or masters[0] is None or _failed(masters[0]):
                        return False
                    ports.add(masters[0].port)
            if len(ports) != 1 or not self.node(ports.pop()).running:
                return False
        return True

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        last_error = ""
        while True:
            try:
                if condition():
                    return
            except RedisError as exc:  # a node still loading, or a view mid-change
                last_error = f"; last error: {exc!r}"
            if time.monotonic() >= deadline:
                raise ClusterFormationError(
                    f"no {what} after {timeout_s:.1f} s{last_error}\n{self.describe()}"
                )
            time.sleep(_POLL_S)

    def describe(self) -> str:
        """Every node's own state and log tail: what a failed wait reports."""
        lines = []
        for node in self.nodes:
            lines.append(f"--- {node.name} {node.address} pid={node.pid} role={node.role}")
            if node.running:
                with contextlib.suppress(RedisError):
                    for shard in node.shards():
                        lines.append(f"    {shard}")
            lines.append(_indent(log_tail(node.server.log_path, 8)))
        return "\n".join(lines)


def _slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Contiguous, equal-as-can-be ranges covering every slot, one per master."""
    bounds = [CLUSTER_SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _failed(node: ShardNode) -> bool:
    return node.health.startswith("fail")


def _ranges(slots: Sequence[int]) -> str:
    """`slots` (sorted) as "0-99,200", for messages."""
    runs: list[list[int]] = []
    for slot in slots:
        if runs and slot == runs[-1][1] + 1:
            runs[-1][1] = slot
        else:
            runs.append([slot, slot])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _covered(shards: Iterable[Shard]) -> int:
    return sum(end - start + 1 for shard in shards for start, end in shard.slots)


def _indent(text: str) -> str:
    return "\n".join(f"    | {line}" for line in text.splitlines())
