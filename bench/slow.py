"""Slow clients beside normal ones, against the default ``newsdesk serve`` on 127.0.0.1 (issue 14, acceptance 4).

One command runs the whole benchmark::

    .venv/bin/python bench/slow.py --index /tmp/slow-sample --seconds 20 --slow 20 --clients 4

1. ``newsdesk serve --index DIR --host 127.0.0.1 --port <free port>`` starts with its default server and settings
   (``NEWSDESK_API_KEY`` set to a key of this run, so the slow bodies are writes the server must read;
   ``--processes 2`` for the gunicorn workers);
2. three timed phases of ``--seconds`` each, in one run: ``--clients`` normal clients alone (each its own keep-alive
   connection, ``GET /api/search`` back to back, the query texts the sample's headlines), then the same clients
   while ``--slow`` slow clients trickle (half send a request's headers one byte every ``--interval`` seconds and
   never finish them; half send complete headers of a 1 MB write with the key, then its body one byte at a time),
   then the normal clients alone again. A slow client whose connection the server closes connects again at once,
   as an attacker would; the count of those closes is reported;
3. the criterion: the normal clients' p99 with the slow clients is within ``--limit`` (2x) of their p99 alone, the
   mean of the two alone phases (which bracket it, so drift of the shared machine shows as a gap between them);
   zero errors among the normal requests;
4. the JSON report (latencies, ratio, slow-client counts, the command, CPU flags avx2/avx512f/avx512_vnni from
   /proc/cpuinfo) is printed and written to ``--out``; exit status 1 when the criterion is not met.

Bounded: connections (``--slow`` at a time, at most ``--max-connects`` over the run), time (three phases), one
address (127.0.0.1). ``SlowClients``, ``slow_request``, ``cpu_flags``, ``acceptance`` and ``build_report`` are
importable and unit-tested (``tests/test_bench_slow.py``). The server tests trickle with their own, smaller client
(``tests/procs.py``'s ``Trickle``): tests import no benchmark code, so a benchmark can change what it measures
without a test changing what it checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import selectors
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import BenchError, git_commit, git_dirty, loadavg  # noqa: E402
from bench.serve import HOST, QueryFeed, Server, read_query_texts, run_target, summarize  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni")
DEFAULT_QUERIES = ROOT / "index_data" / "sample.jsonl"
SLOW_BODY_BYTES = 1_000_000


def slow_request(kind: str, host: str, key: str = "") -> tuple[bytes, bytes]:
    """What one slow client sends: a head sent whole, then a tail trickled a byte at a time and never finished.

    ``headers``: the head is a search's request line, the tail an endless header value (the headers never end).
    ``body``: the head is a whole write request's headers (with ``key``) announcing ``SLOW_BODY_BYTES``, the tail
    its JSON body, never complete.
    """
    if kind == "headers":
        return f"GET /api/search?q=slow HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode(), b"a"
    if kind == "body":
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        head = (
            f"POST /api/articles HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n"
        )
        return head.encode(), b" "
    raise ValueError(f"kind must be headers or body, got {kind!r}")


@dataclass
class SlowStats:
    connects: int = 0
    server_closes: int = 0  # connections the server closed (or answered) while they trickled
    bytes_sent: int = 0
    refused: int = 0  # connect attempts that failed (a server past its connection limit keeps them waiting)


class SlowClients:
    """``count`` connections to ``host:port``, each sending its ``slow_request`` head and then one tail byte every
    ``interval`` seconds, from one thread; a connection the server closes (or answers) is counted and opened again,
    up to ``max_connects`` connections over the run. ``kinds`` alternate over the connections."""

    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        interval: float = 0.5,
        kinds: Sequence[str] = ("headers", "body"),
        key: str = "",
        max_connects: int = 10_000,
    ) -> None:
        self.address = (host, port)
        self.count, self.interval, self.kinds, self.key = count, interval, list(kinds), key
        self.max_connects = max_connects
        self.stats = SlowStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, wait: float = 10.0) -> SlowClients:
        """Start trickling; return once every connection has been opened (or ``wait`` seconds passed)."""
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._thread.start()
        self._ready.wait(wait)
        return self

    def stop(self) -> SlowStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.stats

    def __enter__(self) -> SlowClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open(self, slot: int) -> socket.socket | None:
        if self.stats.connects >= self.max_connects:
            return None
        head, _ = slow_request(self.kinds[slot % len(self.kinds)], self.address[0], self.key)
        try:
            sock = socket.create_connection(self.address, timeout=2.0)
            sock.sendall(head)
        except OSError:
            self.stats.refused += 1
            return None
        sock.setblocking(False)
        self.stats.connects += 1
        self.stats.bytes_sent += len(head)
        return sock

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        socks: list[socket.socket | None] = []
        try:
            for slot in range(self.count):
                opened = self._open(slot)
                socks.append(opened)
                if opened is not None:
                    selector.register(opened, selectors.EVENT_READ, slot)
            self._ready.set()
            next_tick = time.monotonic()
            while not self._stop.is_set():
                timeout = max(0.0, next_tick - time.monotonic())
                for key, _ in selector.select(timeout=min(timeout, 0.1)):  # the server spoke or closed: reconnect
                    self._replace(selector, socks, int(key.data))
                if time.monotonic() >= next_tick:
                    next_tick += self.interval
                    for slot in range(self.count):
                        sock = socks[slot]
                        if sock is None:
                            socks[slot] = sock = self._open(slot)
                            if sock is None:
                                continue
                            selector.register(sock, selectors.EVENT_READ, slot)
                        try:
                            sock.send(slow_request(self.kinds[slot % len(self.kinds)], "")[1])
                            self.stats.bytes_sent += 1
                        except (BlockingIOError, InterruptedError):
                            pass
                        except OSError:
                            self._replace(selector, socks, slot)
        finally:
            self._ready.set()
            for sock in socks:
                if sock is not None:
                    sock.close()
            selector.close()

    def _replace(self, selector: selectors.BaseSelector, socks: list[socket.socket | None], slot: int) -> None:
        sock = socks[slot]
        if sock is not None:
            selector.unregister(sock)
            sock.close()
            self.stats.server_closes += 1
        opened = socks[slot] = self._open(slot)
        if opened is not None:
            selector.register(opened, selectors.EVENT_READ, slot)


# -- pure parts ------------------------------------------------------------------------------------------------------


def cpu_flags(cpuinfo: str) -> dict[str, bool]:
    """Which of ``FLAGS`` the first ``flags`` line of a /proc/cpuinfo text lists."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            present = set(value.split())
            return {flag: flag in present for flag in FLAGS}
    return dict.fromkeys(FLAGS, False)


def p99(phase: Mapping[str, Any]) -> float | None:
    """A phase's p99 in ms (bench/serve.py's ``summarize`` shape), or None."""
    value = (phase.get("latency_ms") or {}).get("p99")
    return None if value is None else float(value)


def acceptance(
    alone: Sequence[Mapping[str, Any]], mixed: Mapping[str, Any], limit: float = 2.0, slow: int = 0
) -> dict[str, Any]:
    """The criterion: ``mixed`` p99 <= ``limit`` x the mean p99 of the ``alone`` phases, no errors in any phase,
    and slow clients present; ``passed`` is False when anything needed is missing."""
    alone_p99 = [p99(a) for a in alone]
    mixed_p99 = p99(mixed)
    errors = sum(int(a.get("errors", 0)) for a in alone) + int(mixed.get("errors", 0))
    notes: list[str] = []
    if not alone_p99 or any(p is None for p in alone_p99) or mixed_p99 is None:
        return {"passed": False, "ratio": None, "limit": limit, "errors": errors, "notes": ["a phase has no latency"]}
    baseline = sum(p for p in alone_p99 if p is not None) / len(alone_p99)
    ratio = round(mixed_p99 / baseline, 3) if baseline > 0 else None
    if errors:
        notes.append(f"{errors} normal requests failed")
    if slow < 1:
        notes.append("no slow clients ran")
    passed = ratio is not None and ratio <= limit and not errors and slow >= 1
    return {
        "passed": passed,
        "ratio": ratio,
        "limit": limit,
        "baseline_p99_ms": round(baseline, 3),
        "mixed_p99_ms": mixed_p99,
        "errors": errors,
        "notes": notes,
    }


def build_report(
    phases: Mapping[str, Mapping[str, Any]],
    slow: SlowStats,
    slow_count: int,
    limit: float,
    machine: Mapping[str, Any],
    command: str,
    server: Mapping[str, Any],
) -> dict[str, Any]:
    alone = [phases["alone_before"], phases["alone_after"]]
    return {
        "benchmark": "slow clients beside normal searches (issue 14, acceptance 4)",
        "command": command,
        "phases": dict(phases),
        "slow_clients": {"count": slow_count, **vars(slow)},
        "acceptance": acceptance(alone, phases["with_slow"], limit, slow_count),
        "server": dict(server),
        "machine": dict(machine),
    }


# -- the run ---------------------------------------------------------------------------------------------------------


def _phase(port: int, feed: QueryFeed, clients: int, seconds: float, name: str) -> dict[str, Any]:
    def next_path() -> str:
        return "/api/search?" + urlencode({"q": feed.take(), "k": 10})

    return summarize(run_target(name, next_path, port, clients, seconds, warmup=5))


def benchmark(args: argparse.Namespace, command: str) -> dict[str, Any]:
    texts = read_query_texts(args.queries, fields=("title",))
    feed = QueryFeed(texts)
    key = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="newsdesk-slow-") as tmp:
        log = Path(tmp) / "server.log"
        server = Server(args.index, args.workers, log, None, args.processes, env={"NEWSDESK_API_KEY": key})
        try:
            health, ready_s = server.wait_ready(args.ready_timeout)
            phases: dict[str, dict[str, Any]] = {}
            phases["alone_before"] = _phase(server.port, feed, args.clients, args.seconds, "alone_before")
            slow = SlowClients(HOST, server.port, args.slow, args.interval, key=key, max_connects=args.max_connects)
            with slow:
                phases["with_slow"] = _phase(server.port, feed, args.clients, args.seconds, "with_slow")
            phases["alone_after"] = _phase(server.port, feed, args.clients, args.seconds, "alone_after")
        finally:
            server.stop()
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        flags = {}
    machine = {
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1min": loadavg(),
    }
    server_info = {
        "command": " ".join(server.cmd),
        "index": str(args.index),
        "articles": health.get("articles"),
        "passages": health.get("passages"),
        "ready_s": round(ready_s, 2),
    }
    report = build_report(phases, slow.stats, args.slow, args.limit, machine, command, server_info)
    report["git_commit"] = git_commit()
    report["git_dirty"] = git_dirty()
    return report


def summary(report: Mapping[str, Any]) -> str:
    acc = report["acceptance"]
    p = report["phases"]
    return (
        f"p99 alone {p99(p['alone_before'])} / {p99(p['alone_after'])} ms, with "
        f"{report['slow_clients']['count']} slow clients {p99(p['with_slow'])} ms: {acc['ratio']}x "
        f"(limit {acc['limit']}x) -> {'PASS' if acc['passed'] else 'FAIL'}; the server closed "
        f"{report['slow_clients']['server_closes']} slow connections"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="index to serve (read only: nothing is written)")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="JSONL whose titles are the queries")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each of the three phases")
    parser.add_argument("--clients", type=int, default=4, help="normal search clients")
    parser.add_argument("--slow", type=int, default=20, help="slow clients (half headers, half bodies)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a slow client's bytes")
    parser.add_argument("--max-connects", type=int, default=5_000, help="most slow connections over the run")
    parser.add_argument("--workers", type=int, default=4, help="the server's --workers (its default)")
    parser.add_argument("--processes", type=int, default=1, help="the server's --processes (default 1: waitress)")
    parser.add_argument("--limit", type=float, default=2.0, help="allowed p99 ratio, with slow clients / alone")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    args = parser.parse_args(argv)
    if not 1 <= args.slow <= 1000 or not 1 <= args.clients <= 64 or not 1 <= args.seconds <= 600:
        parser.error("--slow 1..1000, --clients 1..64 and --seconds 1..600 keep the run bounded")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/slow.py", *(argv or sys.argv[1:])])
    try:
        report = benchmark(args, command)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(summary(report), file=sys.stderr)
    return 0 if report["acceptance"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
