"""FAISS against Milvus on one index: the same stored embeddings searched through each backend (issue 8).

    .venv/bin/python bench/milvus.py --index bench/results/quality/scifact --work bench/results/milvus \\
        --queries ../shared/data/scifact/queries.jsonl --qrels ../shared/data/scifact/qrels/test.tsv
    .venv/bin/python bench/milvus.py --index bench/results/quality/rtqa --work bench/results/milvus \\
        --queries bench/results/quality/rtqa-dev.jsonl --answer-k 5

The index (built by ``newsdesk index`` with FAISS, e.g. by ``bench/quality.py``) is copied to ``WORK/<name>-milvus``
and its manifest switched to ``store: milvus`` (Milvus Lite in the copy unless ``--milvus-uri``) with fresh
collection names; opening the copy fills the collections from the SQLite store, as any open of a Milvus index with
a stale state does. Both indexes then hold the very same vectors, chunking and model, so any difference in the
figures comes from the vector store. ``newsdesk eval`` runs on each, one after the other, and a JSON report with
both and their differences goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.settings import Settings  # noqa: E402
from search.storage.index import VECTORS_STATE, open_index  # noqa: E402
from search.storage.manifest import read_manifest, write_manifest  # noqa: E402
from search.vectors.milvus.vectors import MilvusConfig  # noqa: E402


def milvus_copy(index: Path, work: Path, settings: Settings) -> tuple[Path, float]:
    """A copy of ``index`` whose vectors live in Milvus; returns it and the seconds filling the collections took."""
    source = index.resolve()
    target = work / f"{index.name}-milvus"
    if target.exists():
        shutil.rmtree(target)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.faiss", VECTORS_STATE, "milvus.db"))
    manifest = read_manifest(target)
    config = MilvusConfig.from_settings(settings.replace(store="milvus"), target.name)
    manifest["store"] = "milvus"
    manifest["milvus"] = config.manifest_entry(int(manifest["model"]["dimension"]))
    write_manifest(target, manifest)
    started = time.perf_counter()
    open_index(target, None).close()  # fills both collections from the stored embeddings
    return target, round(time.perf_counter() - started, 1)


def evaluate(index: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [str(ROOT / ".venv" / "bin" / "newsdesk"), "eval", "--index", str(index), "--queries", str(args.queries)]
    command += ["--json", "--answer-k", args.answer_k] + [arg for m in args.mode for arg in ("--mode", m)]
    if args.qrels is not None:
        command += ["--qrels", str(args.qrels)]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ))
    return {"seconds": round(time.perf_counter() - started, 1), "figures": json.loads(done.stdout)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="A FAISS index built by newsdesk index.")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "milvus")
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--qrels", type=Path, default=None)
    parser.add_argument("--mode", action="append", default=None, help="Modes to evaluate [default: dense, hybrid].")
    parser.add_argument("--answer-k", default="1,5,10,20")
    parser.add_argument("--milvus-uri", default="milvus.db")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.mode = args.mode or ["dense", "hybrid"]
    if (read_manifest(args.index.absolute()).get("store") or "faiss") != "faiss":
        print(f"error: {args.index} is not a FAISS index", file=sys.stderr)
        return 1
    copy, fill_seconds = milvus_copy(args.index, args.work, Settings(milvus_uri=args.milvus_uri))
    report: dict[str, Any] = {"index": str(args.index), "milvus_copy": str(copy), "milvus_fill_seconds": fill_seconds}
    report["faiss"] = evaluate(args.index, args)
    report["milvus"] = evaluate(copy, args)
    report["milvus_minus_faiss"] = {
        mode: {
            name: round(value - report["faiss"]["figures"][mode][name], 4)
            for name, value in figures.items()
            if isinstance(value, float)
        }
        for mode, figures in report["milvus"]["figures"].items()
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
