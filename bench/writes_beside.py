"""Search p99 alone and beside writes that never pause, on indexes ``bench/archive.py`` built (issue 17, acceptance 2):
the archive benchmark's two phases on their own, without its 27-minute build and serve run, and the same over HTTP.

```sh
.venv/bin/python bench/writes_beside.py --work /tmp/archive --sizes 3000,26671 --seconds 30 \
    [--only thread|process|http]
```

For each size, the index ``<work>/archive-<size>`` (hash vectors) is opened with ``bench/archive.py``'s hash
embedder, then ``writes_under_load`` (a writer thread in this process) and ``writes_beside_process`` (a second
process writing through ``indexer.live.Writer``) each search alone for ``--seconds`` and then as long beside the
writes. ``http`` (``http_phase``) serves the index with the default ``newsdesk serve`` (the processes and threads it
picks for the cores it finds; the hash embedder swapped in): ``--clients`` keep-alive clients search back to back
for ``--seconds`` alone, then as long while one more client adds a 10-article batch (``POST /api/articles``) and
deletes it again (``DELETE /api/articles`` with the batch's ids: one write), again and again: how the product takes
writes while it serves. Each ratio is within one phase of one run. Prints one JSON line per phase and writes the
report to ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import archive  # noqa: E402

from bench.serve import HOST, QueryFeed, Server, run_target, summarize  # noqa: E402
from search.models import Article, to_plain  # noqa: E402
from search.service import SearchService  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import open_index  # noqa: E402


def http_phase(
    target: Path, work: Path, held: list[Article], questions: list[str], seconds: float, clients: int
) -> dict[str, Any]:
    """Search p99 over HTTP alone and beside a client that adds and deletes 10-article batches back to back, on the
    default ``newsdesk serve`` (its own choice of processes and threads for the cores here)."""
    key = secrets.token_hex(16)
    exe = [sys.executable, archive.__file__, archive.HASH_CLI]
    server = Server(target, None, work / "writes-beside-http.log", None, None, {"NEWSDESK_API_KEY": key}, exe=exe)
    feed = QueryFeed(questions)

    def path() -> str:
        return "/api/search?" + urlencode({"q": feed.take(), "k": 10, "mode": "hybrid"})

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    writes: list[tuple[str, float]] = []
    failures: list[str] = []
    done = threading.Event()

    def request(conn: http.client.HTTPConnection, method: str, url: str, body: bytes | None) -> None:
        conn.request(method, url, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status} {text[:200]!r}")

    def write_loop() -> None:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=600)
        n = 0
        try:
            while not done.is_set():
                batch = archive.write_batch(held, n, f"http{n}")
                t = time.perf_counter()
                request(conn, "POST", "/api/articles", json.dumps({"articles": [to_plain(a) for a in batch]}).encode())
                writes.append(("add", time.perf_counter() - t))
                t = time.perf_counter()
                request(conn, "DELETE", "/api/articles", json.dumps({"ids": [a.id for a in batch]}).encode())
                writes.append(("delete", time.perf_counter() - t))
                n += 1
        except Exception as exc:  # reported: a failed write is a finding, not a crash of the benchmark
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    try:
        _, ready_s = server.wait_ready(600)
        alone = summarize(run_target("hybrid", path, server.port, clients, seconds, warmup=5))
        thread = threading.Thread(target=write_loop, name="bench-http-writer", daemon=True)
        thread.start()
        loaded = summarize(run_target("hybrid", path, server.port, clients, seconds, warmup=0))
        done.set()
        thread.join()
        said = server.said()
    finally:
        server.stop()

    def cost(kind: str) -> dict[str, Any]:
        took = [t for k, t in writes if k == kind]
        return {"count": len(took), **(archive.percentiles(took) if took else {})}

    p99_alone, p99_loaded = alone["latency_ms"]["p99"], loaded["latency_ms"]["p99"]
    return {
        "where": f"over HTTP: the default newsdesk serve, {clients} search clients, one writing client",
        "server": next((line for line in said.splitlines() if "process(es)" in line), None),
        "ready_s": round(ready_s, 2),
        "seconds": seconds,
        "search_without_writes_ms": {**alone["latency_ms"], "throughput_rps": alone["throughput_rps"]},
        "search_with_writes_ms": {**loaded["latency_ms"], "throughput_rps": loaded["throughput_rps"]},
        "search_errors": alone["errors"] + loaded["errors"],
        "p99_ratio": round(p99_loaded / p99_alone, 2) if p99_alone else None,
        "writes_ms": {"add": cost("add"), "delete": cost("delete")},
        "write_failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench/archive.py's --work (archive-<size> in it)")
    parser.add_argument("--sizes", default="3000,26671", help="articles of each index, comma-separated")
    parser.add_argument("--largest", type=int, default=26671, help="bench/archive.py's largest size (its write pool)")
    parser.add_argument("--seconds", type=float, default=30, help="searches alone, then beside writes, each")
    parser.add_argument("--only", choices=("thread", "process", "http"), help="one of the phases")
    parser.add_argument("--clients", type=int, default=4, help="search clients of the http phase")
    parser.add_argument("--data", type=Path, default=archive.DATA)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    questions = archive.load_questions(args.data, 200)
    report: dict[str, Any] = {"benchmark": "bench/writes_beside.py", "cpu_flags": archive.cpu_flags(), "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        target = args.work / f"archive-{size}"
        if args.only == "http":
            _, held, _ = archive.corpus_articles(args.data, size, args.largest)
            many = archive.load_questions(args.data, 100_000)
            phase = http_phase(target, args.work, held, many, args.seconds, args.clients)
            report["sizes"][str(size)] = {"http": phase}
            print(json.dumps({"size": size, "phase": "http", **phase}), flush=True)
            continue
        embedder = archive.TimedEmbedder()
        service = SearchService(open_index(target, embedder), embedder, Settings.from_env(index_dir=target))
        service.search(questions[0], k=10, mode="hybrid")
        _, held, _ = archive.corpus_articles(args.data, size, args.largest)
        phases: dict[str, Any] = {}
        if args.only in (None, "thread"):
            phases["thread"] = archive.writes_under_load(service, embedder, target, held, questions, args.seconds)
        if args.only in (None, "process"):
            phases["process"] = archive.writes_beside_process(
                service, args.data, target, size, args.largest, questions, args.seconds
            )
        service.index.close()
        report["sizes"][str(size)] = phases
        for name, phase in phases.items():
            print(json.dumps({"size": size, "phase": name, **phase}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
