"""Rankings before and after a change that must not move them (issue 19, acceptance 4): dump, then compare.

Dump, once with the old code and once with the new (run each tree's copy of this script: it imports from the tree
it lies in)::

    git archive main | tar -x -C /tmp/old && cp bench/rankings.py /tmp/old/bench/
    /tmp/old/.venv/bin/python /tmp/old/bench/rankings.py dump --index IDX --rtqa DATA/realtimeqa --out old.json
    .venv/bin/python bench/rankings.py dump --index IDX --rtqa DATA/realtimeqa --out new.json
    .venv/bin/python bench/rankings.py compare old.json new.json

For ``--queries`` RealTime QA questions and every mode, the dump holds what a user and an evaluation see: the whole
``/api/search`` response as plain JSON (articles, scores, passages, highlights, related stories, copies, total;
``took_ms`` left out), a second page (``offset=k``), the batch runs' top 100 articles and passages with their scores
(``batch_search``: SciFact and answer-recall evaluation rank with it) and the dated answers (``answers`` with the
question's date). It only calls what main already had, so the same script runs on both trees. ``compare`` reports
every path that differs (exit status 1 if any).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("hybrid", "dense", "lexical")


def questions(path: Path, n: int) -> list[tuple[str, str | None]]:
    """The first ``n`` distinct questions of a RealTime QA file with their dates (YYYY-MM-DD)."""
    out: dict[str, str | None] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["question"] not in out:
                date = row.get("question_date")
                out[row["question"]] = date.replace("/", "-") if isinstance(date, str) else None
            if len(out) == n:
                break
    return list(out.items())


def dump(index_dir: Path, asked: list[tuple[str, str | None]], k: int) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from search.loading import load_service
    from search.models import to_plain
    from search.settings import Settings

    service = load_service(Settings.from_env().replace(index_dir=index_dir))
    texts = [q for q, _ in asked]
    # A tree with an int8 sketch of the exact base (search/vectors/sketch.py) builds it after the first search:
    # waited for, so that every dumped search goes through it; a tree without one has nothing to wait for.
    service.search(texts[0], k=k, mode="dense")
    getattr(service.index.passages, "wait_for_sketch", lambda: False)()
    out: dict[str, Any] = {}
    for mode in MODES:
        pages = []
        for text in texts:
            for offset in (0, k):
                plain = to_plain(service.search(text, k=k, offset=offset, mode=mode))
                assert isinstance(plain, dict)
                plain.pop("took_ms")
                pages.append(plain)
        batch = [to_plain(r) for r in service.batch_search(texts, 100, mode)]
        answers = []
        for text, date in asked:
            plain = to_plain(service.answers(text, k=5, mode=mode, as_of=date))
            assert isinstance(plain, dict)
            plain.pop("took_ms")
            answers.append(plain)
        out[mode] = {"pages": pages, "batch": batch, "answers": answers}
    return out


def differences(a: object, b: object, path: str = "") -> Iterator[str]:
    """Every path where two JSON values differ (a float differing in any digit counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            if key not in a or key not in b:
                yield f"{path}/{key}: only in {'new' if key not in a else 'old'}"
            else:
                yield from differences(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: {len(a)} items against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            yield from differences(x, y, f"{path}/{i}")
    elif a != b or type(a) is not type(b):
        yield f"{path}: {a!r} against {b!r}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="Write the rankings of this tree's code.")
    d.add_argument("--index", type=Path, required=True)
    d.add_argument("--rtqa", type=Path, required=True, help="RealTime QA directory (questions_dev.jsonl).")
    d.add_argument("--queries", type=int, default=100)
    d.add_argument("--k", type=int, default=10)
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="Every difference between two dumps.")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    if args.command == "dump":
        asked = questions(args.rtqa / "questions_dev.jsonl", args.queries)
        data = {"index": str(args.index), "queries": len(asked), "k": args.k, "modes": dump(args.index, asked, args.k)}
        args.out.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
        return 0
    old, new = (json.loads(p.read_text(encoding="utf-8")) for p in (args.old, args.new))
    found = list(differences(old, new))
    for line in found[:50]:
        print(line)
    counted = {mode: len(old["modes"][mode]["pages"]) for mode in old["modes"]}
    print(f"{len(found)} differences ({old['queries']} queries, pages per mode {counted})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
