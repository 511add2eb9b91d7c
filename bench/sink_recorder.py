"""An SMTP sink in its own process that records when each message arrived, for the benchmarks.

Runs `acme_cli.smtp_sink.MailSink` (memory only, no .eml files) on 127.0.0.1 and every
`--flush-interval-ms` appends one line per message accepted since the last flush to `--out`:

    <order_id>,<received_at>,<message_id>

`received_at` is the sink's `time.time()` when it accepted DATA (Unix seconds, 6 decimals); an
order id or Message-ID the message lacks is written as `-`. Lines are only ever appended whole
and flushed per batch, so a reader that ignores a trailing partial line is always consistent.
`--out` is created only once the sink listens: its existence is the readiness signal.

Kept out of the load generator's process on purpose: receiving costs ~1 ms CPU per message and
would otherwise share the generator's core and event loop (see /work/shared/MEASURING.md).
Stops on SIGTERM/SIGINT (after a final flush) or after `--max-runtime-s`.

SMTP outages on demand (bench/run.py's outage-recovery scenario): SIGUSR1 starts one, SIGUSR2
ends it. With `--outage-mode refuse` (the default) the sink stops listening and drops its open
sessions, so senders get "connection refused" as from a server that is down; with `421` it keeps
listening but answers every message with `421 4.3.2`, as a server shedding load does. Each
switch is logged with its time.

With `--lean` the messages are received by bench/lean_sink.py instead of aiosmtpd: the same
lines at a fraction of the CPU (throughput benchmarks, where the provider's stand-in shares the
cores with the senders it measures); its outages are `refuse` only.

Usage: ``python bench/sink_recorder.py --port 2525 --out /tmp/received.csv [--lean]``
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script: make `bench.*` importable like the other benchmark scripts do.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import IO, Any, Final, Literal

from aiosmtpd.smtp import Envelope

from acme_cli.smtp_sink import MailSink
from bench.lean_sink import LeanSink
from bench.loadgen import install_uvloop, loopback_host

OutageMode = Literal["refuse", "421"]
OUTAGE_MODES: Final = ("refuse", "421")
DEFAULT_FLUSH_INTERVAL_MS: Final = 100
DEFAULT_MAX_RUNTIME_S: Final = 3_600.0
MAX_RUNTIME_S: Final = 24 * 3_600.0

_log = logging.getLogger("sink_recorder")
_OUTAGE_REPLY: Final = "421 4.3.2 service not available (benchmark outage), try again later"


def _refuse_all(_envelope: Envelope) -> str:
    return _OUTAGE_REPLY


class _Outage:
    """Switches the sink between serving and an outage; the switches run on the event loop."""

    def __init__(self, sink: MailSink | LeanSink, mode: OutageMode) -> None:
        self.sink = sink
        self.mode = mode
        self.active = False
        self._switching: asyncio.Lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, active: bool) -> None:
        """Called from the signal handler: switch (in order) on the loop."""
        task = asyncio.get_running_loop().create_task(self._switch(active))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _switch(self, active: bool) -> None:
        async with self._switching:
            if active == self.active:
                return
            if self.mode == "421" and isinstance(self.sink, MailSink):
                self.sink.policy = _refuse_all if active else None
            elif active:
                await self.sink.stop()
            else:
                await self.sink.start()
            self.active = active
            _log.info("outage %s (mode %s) at %.6f", "started" if active else "ended", self.mode,
                      time.time())  # fmt: skip

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _flush(sink: MailSink | LeanSink, out: IO[str]) -> int:
    """Write and forget the messages accepted since the last flush; how many there were."""
    batch = len(sink.messages)
    if batch == 0:
        return 0
    messages: list[Any] = sink.messages[:batch]  # ReceivedMessage or LeanMessage: same fields
    lines = [f"{m.order_id or '-'},{m.received_at:.6f},{m.message_id or '-'}\n" for m in messages]
    # Dropping them keeps memory flat over a long run; nothing else reads `messages` here.
    del sink.messages[:batch]
    out.write("".join(lines))
    out.flush()
    return batch


async def record(host: str, port: int, out_path: Path, flush_interval_s: float,
                 max_runtime_s: float, outage_mode: OutageMode = "refuse",
                 lean: bool = False) -> int:  # fmt: skip
    """Run the sink until SIGTERM/SIGINT or `max_runtime_s`; the number of messages recorded."""
    sink: MailSink | LeanSink = (
        LeanSink(host, port) if lean else MailSink(None, host=host, port=port)
    )
    await sink.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    outage = _Outage(sink, outage_mode)
    loop.add_signal_handler(signal.SIGUSR1, outage.request, True)
    loop.add_signal_handler(signal.SIGUSR2, outage.request, False)
    total = 0
    deadline = time.monotonic() + max_runtime_s
    # Opened (so created) only now that the sink listens: the parent waits for this file.
    with out_path.open("a", encoding="ascii") as out:
        _log.info("listening on %s:%d, recording to %s", host, port, out_path)
        # Bounded by max_runtime_s / flush interval iterations.
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), flush_interval_s)
            total += _flush(sink, out)
        await outage.wait()
        await sink.stop()
        total += _flush(sink, out)
    _log.info("stopped after recording %d messages", total)
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="file the lines are appended to")
    parser.add_argument("--flush-interval-ms", type=int, default=DEFAULT_FLUSH_INTERVAL_MS)
    parser.add_argument("--max-runtime-s", type=float, default=DEFAULT_MAX_RUNTIME_S)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument("--outage-mode", choices=OUTAGE_MODES, default="refuse",
                        help="what SIGUSR1 does until SIGUSR2: refuse connections, or 421 "
                        "every message")  # fmt: skip
    parser.add_argument("--lean", action="store_true",
                        help="receive with bench/lean_sink.py, not aiosmtpd")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(asctime)s %(message)s")
    # aiosmtpd logs every SMTP command at INFO: several lines per message would cost the sink
    # more CPU than receiving does. Its warnings and errors still show.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if args.lean and args.outage_mode == "421":
        print("sink_recorder: --lean has refuse outages only", file=sys.stderr)
        return 2
    if not 0 < args.max_runtime_s <= MAX_RUNTIME_S or not 1 <= args.flush_interval_ms <= 10_000:
        print("sink_recorder: bad --max-runtime-s or --flush-interval-ms", file=sys.stderr)
        return 2
    host = loopback_host(args.host)
    if not args.no_uvloop:
        install_uvloop()
    asyncio.run(
        record(
            host,
            args.port,
            args.out,
            args.flush_interval_ms / 1000,
            args.max_runtime_s,
            args.outage_mode,
            args.lean,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
