"""Incremental re-indexing against a first build, in one command, through the real CLI.

    .venv/bin/python bench/reindex.py --data ../shared/data/bbc --work bench/results/reindex [--backend onnx-int8]

1. ``newsdesk index`` of the corpus into a fresh index, timed (the baseline).
2. The same command again on the unchanged corpus, timed: the ratio to (1) is the cost of finding nothing to do.
3. 1% of the articles get one paragraph edited (a sentence appended); the command again, timed, and the number of
   passages it embedded compared with the number of edited paragraphs: only those may reach the model (the
   edited articles' headlines and untouched paragraphs keep their stored vectors).
4. 1% of the articles deleted from the corpus; the command again: they must leave the index.

Every step ends with ``newsdesk check``. Each command is a new process, so every time includes process start and
model load, as a user running it would see. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NEWSDESK = str(ROOT / ".venv" / "bin" / "newsdesk")
SUMMARY = re.compile(
    r"(\d+) added, (\d+) changed, (\d+) metadata updated, (\d+) deleted(?: \([^)]*\))?, (\d+) unchanged"
    r"(?:, \d+ missing from the sources kept)?; (\d+) (?:passages|texts) embedded, (\d+) reused"
)


def read_articles(data: Path) -> list[dict[str, Any]]:
    path = data / "articles.jsonl.gz" if data.is_dir() else data
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_corpus(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(seconds, stderr) of one CLI run; a failure stops the benchmark with the CLI's message."""
    started = time.perf_counter()
    done = subprocess.run([NEWSDESK, *args], capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"newsdesk {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return seconds, done.stderr


def summary(stderr: str) -> dict[str, int]:
    m = SUMMARY.search(stderr)
    if m is None:
        raise SystemExit(f"expected an incremental update, the CLI said: {stderr.strip()[-300:]}")
    keys = ("added", "changed", "metadata", "deleted", "unchanged", "embedded", "reused")
    return dict(zip(keys, (int(g) for g in m.groups()), strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BBC folder or a JSONL(.gz) of articles.")
    parser.add_argument("--work", type=Path, default=Path("bench/results/reindex"))
    parser.add_argument("--articles", type=int, default=0, help="Use only the first N articles (0: all).")
    parser.add_argument("--share", type=float, default=0.01, help="Share of articles edited, then deleted.")
    parser.add_argument("--backend", default=None, help="Embedding backend (default: the setting's).")
    args = parser.parse_args(argv)

    rows = read_articles(args.data)
    if args.articles:
        rows = rows[: args.articles]
    args.work.mkdir(parents=True, exist_ok=True)
    corpus, index = args.work / "corpus.jsonl", args.work / "index"
    for stale in (index, *args.work.glob(".index.*")):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.is_dir():
            shutil.rmtree(stale)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    extra = ["--backend", args.backend] if args.backend else []
    base = ["index", str(corpus), "--index", str(index), *extra]
    n = max(1, round(len(rows) * args.share))
    step = max(1, len(rows) // n)

    write_corpus(corpus, rows)
    first, _ = run(base, env)
    run(["check", "--index", str(index)], env)
    unchanged_s, err = run(base, env)
    unchanged = summary(err)

    edited = 0
    for r in rows[::step][:n]:
        paragraphs = list(r["paragraphs"])
        last = max(range(len(paragraphs)), key=lambda i: len(paragraphs[i]))  # a real paragraph, not a byline
        paragraphs[last] = paragraphs[last] + " This paragraph was updated after publication."
        r["paragraphs"] = paragraphs
        edited += 1
    write_corpus(corpus, rows)
    changed_s, err = run(base, env)
    changed = summary(err)
    run(["check", "--index", str(index)], env)

    gone = {r["id"] for r in rows[1::step][:n]}
    write_corpus(corpus, [r for r in rows if r["id"] not in gone])
    deleted_s, err = run(base, env)
    deleted = summary(err)
    run(["check", "--index", str(index)], env)

    report: dict[str, Any] = {
        "benchmark": "reindex",
        "data": str(args.data),
        "articles": len(rows),
        "backend": args.backend or "setting default",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()[0]},
        "first_build_seconds": round(first, 1),
        "unchanged": {**unchanged, "seconds": round(unchanged_s, 1), "ratio_to_first": round(unchanged_s / first, 4)},
        "edited_1pct": {
            **changed,
            "articles_edited": edited,
            "paragraphs_edited": edited,
            "seconds": round(changed_s, 1),
            "ratio_to_first": round(changed_s / first, 4),
        },
        "deleted_1pct": {**deleted, "articles_deleted": len(gone), "seconds": round(deleted_s, 1)},
    }
    report["acceptance"] = {
        "unchanged re-index <= 5% of first build": unchanged_s <= 0.05 * first and unchanged["embedded"] == 0,
        # each edited paragraph, and the edited article's headline + lead (its article vector) when the edit is in it
        "1% edited: only the edited passages (and leads) embedded": changed["changed"] == edited
        and edited <= changed["embedded"] <= 2 * edited,
        "1% deleted: removed, nothing embedded": deleted["deleted"] == len(gone) and deleted["embedded"] == 0,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(report["acceptance"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
