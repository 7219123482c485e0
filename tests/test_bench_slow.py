"""Unit tests of bench/slow.py's parts (no newsdesk server, no model): ``.venv/bin/pytest tests/test_bench_slow.py``.

The slow clients must trickle what they say, count and replace the connections a server closes, and stay within
their connection bound; the criterion must compare the mixed p99 with the alone phases and never pass a run with
errors, missing phases or no slow clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.slow import SLOW_BODY_BYTES, SlowClients, SlowStats, acceptance, build_report, cpu_flags, slow_request


def _phase(p99: float | None, errors: int = 0) -> dict[str, Any]:
    return {"latency_ms": {"p50": None if p99 is None else p99 / 2, "p99": p99}, "errors": errors}


def test_slow_requests_never_finish_their_part() -> None:
    head, tail = slow_request("headers", "h")
    assert head.startswith(b"GET /api/search?q=slow HTTP/1.1\r\n") and b"\r\n\r\n" not in head + tail * 1000
    head, tail = slow_request("body", "h", key="k")
    assert head.endswith(f"Content-Length: {SLOW_BODY_BYTES}\r\n\r\n".encode()) and b"Bearer k" in head
    assert tail == b" "
    with pytest.raises(ValueError):
        slow_request("neither", "h")


def test_cpu_flags_are_read_from_the_first_flags_line() -> None:
    info = "processor : 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor : 1\nflags : avx512_vnni\n"
    assert cpu_flags(info) == {"avx2": True, "avx512f": True, "avx512_vnni": False}
    assert cpu_flags("nothing here") == {"avx2": False, "avx512f": False, "avx512_vnni": False}


@pytest.mark.parametrize(
    ("alone", "mixed", "slow", "passed", "ratio"),
    [
        ([_phase(10.0), _phase(12.0)], _phase(21.0), 20, True, 1.909),
        ([_phase(10.0), _phase(12.0)], _phase(23.0), 20, False, 2.091),  # over 2x the mean of the alone p99s
        ([_phase(10.0), _phase(10.0, errors=1)], _phase(11.0), 20, False, 1.1),  # an error fails the run
        ([_phase(10.0), _phase(10.0)], _phase(11.0), 0, False, 1.1),  # no slow clients: nothing was tested
        ([_phase(10.0), _phase(None)], _phase(11.0), 20, False, None),  # a phase without a latency
    ],
)
def test_acceptance(alone: list[dict[str, Any]], mixed: dict[str, Any], slow: int, passed: bool, ratio: Any) -> None:
    got = acceptance(alone, mixed, 2.0, slow)
    assert got["passed"] is passed and got["ratio"] == ratio


def test_report_names_phases_slow_counts_and_machine() -> None:
    phases = {"alone_before": _phase(10.0), "with_slow": _phase(12.0), "alone_after": _phase(10.0)}
    report = build_report(phases, SlowStats(20, 5, 100, 0), 20, 2.0, {"cpu_flags": {}}, "cmd", {"index": "x"})
    assert report["acceptance"]["passed"] and report["acceptance"]["ratio"] == 1.2
    assert report["slow_clients"] == {"count": 20, "connects": 20, "server_closes": 5, "bytes_sent": 100, "refused": 0}
    assert report["command"] == "cmd" and set(report["phases"]) == set(phases)


@pytest.fixture
def closing_server() -> Iterator[tuple[int, list[bytes]]]:
    """A listener that reads each connection until it has a slow search's head and 3 trickled bytes, then closes
    it."""
    need = len(slow_request("headers", "127.0.0.1")[0]) + 3
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_read, args=(conn,), daemon=True).start()

    def _read(conn: socket.socket) -> None:
        data = b""
        with conn:
            conn.settimeout(5)
            while len(data) < need:
                chunk = conn.recv(need - len(data))
                if not chunk:
                    break
                data += chunk
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    stop.set()
    thread.join()
    listener.close()


def test_slow_clients_trickle_and_replace_closed_connections_within_their_bound(
    closing_server: tuple[int, list[bytes]],
) -> None:
    port, received = closing_server
    with SlowClients("127.0.0.1", port, 3, interval=0.02, kinds=["headers"], max_connects=9) as slow:
        deadline = time.monotonic() + 10
        while slow.stats.connects < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    stats = slow.stats
    assert stats.connects == 9  # three at a time, replaced as closed, and no more than max_connects
    assert stats.server_closes >= 6
    head, tail = slow_request("headers", "127.0.0.1")
    assert len(received) >= 6 and all(data == head + tail * 3 for data in received)  # the head, then tail bytes
    assert stats.bytes_sent >= 9 * len(head)
