"""The blind choice of issue 18's acceptance 4: a story setting, timeline rule and floor for an article vector, from
tuning data alone, against the product before issue 18 (bench/README.md, "A blind protocol for acceptance 4").

Inputs are the reports of runs on tuning data only::

    .venv/bin/python bench/stories.py --index $I --vectors stored --until 1987-03-30 \\
        --thresholds 0.54,0.56,0.58,0.6,0.62,0.64,0.66 --windows 1,2,3 --out tune_stored.json
    .venv/bin/python bench/stories.py --index $I --vectors passage-mean --until 1987-03-30 \\
        --thresholds 0.6 --windows 3 --out tune_base.json
    .venv/bin/python bench/timeline.py --index $T --articles $A --vectors stored --stories 0.54/1,...,0.66/3 \\
        --out timeline_stored.json
    .venv/bin/python bench/timeline.py --index $T --articles $A --vectors passage-mean --stories 0.6/3 \\
        --out timeline_base.json
    .venv/bin/python bench/story_choice.py --stories tune_stored.json --timelines timeline_stored.json \\
        --base-stories tune_base.json --base-timelines timeline_base.json

The baseline is the product before issue 18: stories 0.60 / 3 days on the means of passages, timelines at the
0.45 floor keeping their story's articles whatever their score (``--base-*`` name its setting). For each story
setting the timeline rule and floor with the best tuning-topic F1 are taken (ties: ``keep``, then the higher
floor); kept are the settings whose tuning stories purity and tuning timeline F1 are each at least the baseline's;
the best tuning stories F among them wins (ties: purity, then timeline F1). Only the tuning figures are read here:
the held-out ones in the same reports are printed for the chosen setting after the choice, never compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RULES = ("keep", "floor")  # a story's articles in its timeline: whatever their score / only at or above the floor


def best_timeline(entry: dict[str, Any]) -> tuple[str, float, float]:
    """(rule, floor, tuning F1) with the best tuning F1 of one story setting (ties: ``keep``, the higher floor)."""
    options = [
        (float(row["f1"]), -RULES.index(rule), float(floor), rule)
        for rule in RULES
        for floor, row in entry[rule]["grid"]["tuning"].items()
    ]
    f1, _, floor, rule = max(options)
    return rule, floor, f1


def setting(rows: Sequence[dict[str, Any]], threshold: float, window: int) -> dict[str, Any]:
    for row in rows:
        if abs(float(row["threshold"]) - threshold) < 1e-9 and int(row["window_days"]) == window:
            return row
    raise SystemExit(f"error: no story setting {threshold}/{window} in the reports")


def choose(
    stories: Sequence[dict[str, Any]], timelines: Sequence[dict[str, Any]], base_purity: float, base_f1: float
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The chosen candidate (None: none passes both constraints) and every candidate's tuning figures."""
    candidates = []
    for line in timelines:
        threshold, window = float(line["threshold"]), int(line["window_days"])
        story = setting(stories, threshold, window)
        rule, floor, f1 = best_timeline(line)
        candidates.append(
            {
                "threshold": threshold,
                "window_days": window,
                "purity": story["purity"],
                "completeness": story["completeness"],
                "f": story["f"],
                "rule": rule,
                "floor": floor,
                "timeline_f1": f1,
                "kept": story["purity"] >= base_purity and f1 >= base_f1,
            }
        )
    kept = [c for c in candidates if c["kept"]]
    chosen = max(kept, key=lambda c: (c["f"], c["purity"], c["timeline_f1"])) if kept else None
    return chosen, candidates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stories", type=Path, required=True, help="bench/stories.py on the tuning half, a grid")
    parser.add_argument("--timelines", type=Path, required=True, help="bench/timeline.py with --stories, a grid")
    parser.add_argument("--base-stories", type=Path, required=True)
    parser.add_argument("--base-timelines", type=Path, required=True)
    parser.add_argument("--base-setting", default="0.6/3", help="the baseline's story threshold/window_days")
    parser.add_argument("--base-floor", type=float, default=0.45, help="the baseline's article-timeline floor")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    threshold, _, window = args.base_setting.partition("/")
    load = [json.loads(p.read_text(encoding="utf-8")) for p in (args.stories, args.timelines)]
    base_story = setting(
        json.loads(args.base_stories.read_text(encoding="utf-8"))["grid"], float(threshold), int(window)
    )
    base_line = setting(
        json.loads(args.base_timelines.read_text(encoding="utf-8"))["stories"], float(threshold), int(window)
    )
    base_tl = base_line["keep"]["grid"]["tuning"][str(args.base_floor)]
    chosen, candidates = choose(load[0]["grid"], load[1]["stories"], base_story["purity"], base_tl["f1"])
    report: dict[str, Any] = {
        "baseline": {
            "setting": args.base_setting,
            "floor": args.base_floor,
            "stories_tuning": {k: base_story[k] for k in ("purity", "completeness", "f")},
            "timeline_tuning": base_tl,
        },
        "candidates": candidates,
        "chosen": chosen,
    }
    if chosen is not None:  # read only now: the chosen candidate's held-out timeline figures
        line = setting(load[1]["stories"], chosen["threshold"], chosen["window_days"])
        report["chosen_heldout_timeline"] = line[chosen["rule"]]["grid"]["heldout"][str(chosen["floor"])]
        report["baseline"]["timeline_heldout"] = base_line["keep"]["grid"]["heldout"][str(args.base_floor)]
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    if chosen is None:
        print("no candidate passes both constraints: the protocol fails", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
