"""Search p99 alone and beside writes that never pause, on indexes ``bench/archive.py`` built (issue 17, acceptance 2):
the archive benchmark's two phases on their own, without its 27-minute build and serve run.

```sh
.venv/bin/python bench/writes_beside.py --work /tmp/archive --sizes 3000,26671 --seconds 30 [--only thread|process]
```

For each size, the index ``<work>/archive-<size>`` (hash vectors) is opened with ``bench/archive.py``'s hash
embedder, then ``writes_under_load`` (a writer thread in this process) and ``writes_beside_process`` (a second
process writing through ``indexer.live.Writer``) each search alone for ``--seconds`` and then as long beside the
writes. Each ratio is within one phase of one run. Prints one JSON line per phase and writes the report to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import archive  # noqa: E402

from search.service import SearchService  # noqa: E402
from search.settings import Settings  # noqa: E402
from search.storage.index import open_index  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench/archive.py's --work (archive-<size> in it)")
    parser.add_argument("--sizes", default="3000,26671", help="articles of each index, comma-separated")
    parser.add_argument("--largest", type=int, default=26671, help="bench/archive.py's largest size (its write pool)")
    parser.add_argument("--seconds", type=float, default=30, help="searches alone, then beside writes, each")
    parser.add_argument("--only", choices=("thread", "process"), help="one of the two phases")
    parser.add_argument("--data", type=Path, default=archive.DATA)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    questions = archive.load_questions(args.data, 200)
    report: dict[str, Any] = {"benchmark": "bench/writes_beside.py", "cpu_flags": archive.cpu_flags(), "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",") if s.strip()):
        target = args.work / f"archive-{size}"
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
