"""Two stateless replicas on Milvus: how long until a 10-article write is served by them (issue 17, acceptance 6).

    .venv/bin/python bench/replica.py --index /tmp/arch17g/.archive-2667 --work /tmp/replica-bench \\
        [--rounds 3] [--out bench/results/replica.json]

``--index`` is an index built by ``bench/archive.py`` (FAISS, ``HashVectorEmbedder`` vectors: 2,667 RealTime QA
articles are about 110k passages). It is copied under ``--work`` and switched to Milvus as ``bench/milvus.py`` does
(``milvus_copy``: the open fills the vector and record collections from SQLite), on Milvus Lite's own gRPC server
(``python -m milvus_lite server``) in a process of its own, reached at an ``http://`` URI as a Milvus server is. Two
replica processes then serve it as ``newsdesk serve --collections`` does (``open_replica`` with a background reload,
``create_app``; the hash embedder, which ``serve`` cannot load, is the one difference), polling every 0.2 s.

Each round, the writer (this process: ``indexer.update.add_articles`` on the index directory, which publishes to
the replicas) adds 10 articles of the corpus not in the index; from the moment the write returns (committed and
published), each replica is asked over HTTP, every 20 ms, a lexical search for the first new article's title until it
lists that article: ``visible_s``. Rounds alternate between ``delta`` (as shipped: the replicas apply the published
delta) and ``full`` (the writer publishes no delta, as before issue 17, so the replicas reload the corpus: the
baseline, in the same run). Each replica reports how many full and delta loads it made, so a ``delta`` round that
fell back to a full reload shows. Reported: per round, the write's seconds and each replica's ``visible_s``; the
medians by mode and their ratio full / delta; the replicas' start (a full load); CPU flags and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.archive import HashVectorEmbedder, cpu_flags, read_articles  # noqa: E402
from bench.milvus import milvus_copy  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.manifest import read_manifest  # noqa: E402

POLL = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"process on port {port} did not start (exit {proc.poll()})")
        time.sleep(0.2)


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as resp:
        return json.loads(resp.read())


def serve_replica(uri: str, meta: str, port: int) -> None:
    """One replica process: the index published in ``meta``, served over HTTP with the API's own app."""
    from werkzeug.serving import make_server

    from api.app import create_app
    from search.service import SearchService
    from search.vectors.milvus.replica import Replica, open_replica

    applied: list[float] = []  # seconds of each Replica.reopen: a delta applied, or a full reload
    reopen = Replica.reopen

    def timed(self: Replica, current: Any) -> Any:
        started = time.perf_counter()
        try:
            return reopen(self, current)
        finally:
            applied.append(round(time.perf_counter() - started, 3))

    Replica.reopen = timed  # type: ignore[method-assign]
    embedder = HashVectorEmbedder()
    index = open_replica(uri, meta, embedder, poll_seconds=0.2, background=True)
    service = SearchService(index, embedder, Settings(index_dir=Path("/nonexistent")))
    app = create_app(service=service)

    def loads() -> dict[str, object]:
        replica = service.index.replica
        assert isinstance(replica, Replica)
        return {"full": replica.loads.full, "deltas": replica.loads.deltas, "reopen_s": list(applied)}

    app.add_url_rule("/bench/loads", "bench_loads", loads)
    make_server("127.0.0.1", port, app, threaded=True).serve_forever()


def visible(port: int, query: str, article_id: str, started: float, limit: float) -> float | None:
    path = "/api/search?" + urllib.parse.urlencode({"q": query, "k": 3, "mode": "lexical"})
    while time.perf_counter() - started < limit:
        found = get(port, path)
        if article_id in [r["article"]["id"] for r in found["results"]]:
            return round(time.perf_counter() - started, 3)
        time.sleep(POLL)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="an index built by bench/archive.py")
    parser.add_argument("--work", type=Path, default=Path("/tmp/replica-bench"))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "realtimeqa")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode (delta, full)")
    parser.add_argument(
        "--modes",
        default="delta,full",
        help="modes the rounds alternate between: delta,full (default) or delta alone (a full round reloads the "
        "corpus on both replicas: minutes at 110k passages, where a delta round takes seconds)",
    )
    parser.add_argument("--limit", type=float, default=600.0, help="seconds to wait for a write to show")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reuse", action="store_true", help="keep the Milvus copy a previous run left in --work")
    parser.add_argument("--serve-replica", nargs=3, metavar=("URI", "META", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_replica:
        serve_replica(args.serve_replica[0], args.serve_replica[1], int(args.serve_replica[2]))
        return
    if args.index is None:
        parser.error("--index is required")

    from indexer.update import add_articles
    from search.storage.index import open_index

    args.work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    log = (args.work / "processes.log").open("ab")
    try:
        copy = args.work / f"{args.index.name}-milvus"
        reuse = args.reuse and copy.is_dir()
        # a kept copy names its server's URI in its manifest: the server comes back on that port
        port = (urllib.parse.urlparse(read_manifest(copy)["milvus"]["uri"]).port or 0) if reuse else free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(args.work / "milvus"), "--port",
             str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(server)
        wait_port(port, server, 120)
        uri = f"http://127.0.0.1:{port}"
        settings = Settings(index_dir=args.work, store="milvus", milvus_uri=uri)
        target, fill_s = copy, None
        if not reuse:
            target, fill_s = milvus_copy(args.index, args.work, settings)
        embedder = HashVectorEmbedder()
        writer = open_index(target, embedder)
        meta = str(writer.manifest["milvus"]["meta"])
        counts = writer.sqlite.counts()
        print(f"index on Milvus: {counts[0]} articles, {counts[1]} passages (filled in {fill_s} s)", file=sys.stderr)

        ports = [free_port(), free_port()]
        started = time.perf_counter()
        for p in ports:
            cmd = [sys.executable, __file__, "--serve-replica", uri, meta, str(p)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for p, proc in zip(ports, procs[1:], strict=True):
            wait_port(p, proc, args.limit)
        start_s = round(time.perf_counter() - started, 1)
        print(f"two replicas serving after {start_s} s", file=sys.stderr)

        fresh = read_articles(args.data, counts[0] + 10 * len(args.modes.split(",")) * args.rounds + 60)[counts[0] :]
        known = set(writer.sqlite.article_hashes())
        fresh = [a for a in fresh if a.id not in known]
        rounds: list[dict[str, Any]] = []
        modes = [m for m in args.modes.split(",") if m]
        if not modes or set(modes) - {"delta", "full"}:
            parser.error(f"--modes takes delta and full, got {args.modes!r}")
        for n in range(len(modes) * args.rounds):
            mode = modes[n % len(modes)]
            batch, fresh = fresh[:10], fresh[10:]
            if mode == "full":
                writer.vectors._store = None  # type: ignore[attr-defined]  # publish no delta: replicas reload whole
            before = [get(p, "/bench/loads") for p in ports]
            t0 = time.perf_counter()
            add_articles(writer, batch, embedder, settings)
            write_s = round(time.perf_counter() - t0, 3)
            acked = time.perf_counter()
            shown = [visible(p, batch[0].title, batch[0].id, acked, args.limit) for p in ports]
            after = [get(p, "/bench/loads") for p in ports]
            took = {k: [a[k] - b[k] for a, b in zip(after, before, strict=True)] for k in ("full", "deltas")}
            reopened = [a["reopen_s"][len(b["reopen_s"]) :] for a, b in zip(after, before, strict=True)]
            rounds.append({"mode": mode, "write_s": write_s, "visible_s": shown, "loads": took, "reopen_s": reopened})
            print(json.dumps(rounds[-1]), file=sys.stderr)
            if mode == "full":
                writer.close()
                writer = open_index(target, embedder)  # the next delta round publishes as shipped
        writer.close()

        def median(mode: str, key: str = "visible_s") -> float | None:
            got = [s for r in rounds if r["mode"] == mode for s in r[key] if s is not None]
            if key == "reopen_s":
                got = [s for r in rounds if r["mode"] == mode for each in r[key] for s in each]
            return round(statistics.median(got), 3) if got else None

        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "index": {"articles": counts[0], "passages": counts[1], "embedder": HashVectorEmbedder.name},
            "milvus": "Milvus Lite gRPC server (python -m milvus_lite server), own process",
            "fill_collections_s": fill_s,
            "replicas_start_s": start_s,
            "rounds": rounds,
            "visible_median_s": {"delta": median("delta"), "full": median("full")},
            "reopen_median_s": {"delta": median("delta", "reopen_s"), "full": median("full", "reopen_s")},
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
        delta, full = median("delta"), median("full")
        report["full_over_delta"] = round(full / delta, 2) if delta and full else None
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n", encoding="utf-8")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    main()
