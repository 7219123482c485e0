"""Wall time of one CLI search, and of a CLI mistake, against baselines measured in the same run.

    .venv/bin/python bench/cli_latency.py --index index_data/sample --runs 7

Build the sample index first (``newsdesk index index_data/sample.jsonl --index index_data/sample``). Every command
is a fresh process, as a user's is; the first run of each is a warm-up (page cache, the int8 export located) and is
not counted. Timed, ``--runs`` times each, median and spread reported:

- ``search``: ``newsdesk search QUERY --index INDEX`` (the default backend, onnx-int8: onnxruntime alone);
- ``invalid_argument``: ``newsdesk search QUERY --index INDEX --k 0`` (must fail in under a second);
- ``missing_index``: ``newsdesk search QUERY --index <a path that does not exist>``;
- for each, the median wall time and the median CPU time (user + system): on a shared machine the wall time
  depends on the other processes, the CPU time far less (see ``timed``);
- baselines: ``python_startup`` (``python -c pass``) and ``torch_path`` (the same search with ``--backend torch``:
  torch and sentence-transformers imported and the model loaded through them, which is what every CLI search paid
  before the int8 backend ran its export alone); with ``--old-tree DIR``, ``old_path``: the same search run by an
  older checkout (``python -m api.cli`` with ``PYTHONPATH=DIR``).

Prints one JSON object: the figures, their ratios to the baselines, the 1-minute load average before and after
(timings on a loaded machine are not comparable), the CPU model, core count and the flags that choose the int8
kernels (avx2, avx512f, avx512_vnni), the commit, and whether the targets (search under 3 s, a mistake under 1 s)
hold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEARCH_TARGET_S = 3.0
MISTAKE_TARGET_S = 1.0
FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_int8")


def newsdesk() -> list[str]:
    """The installed console script beside this interpreter, else the module."""
    script = Path(sys.executable).parent / "newsdesk"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "api.cli"]


def timed(command: list[str], env: dict[str, str], expect: int, cwd: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of ``command``; an unexpected exit status stops the benchmark.

    The CPU time is what the wall time would be on an idle machine for work that runs on one core at a time (the
    CLI search does, but for onnxruntime's and OpenMP's short parallel sections): on this shared 2-core machine
    the wall time of the same command varies with what the other processes do, its CPU time much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd, check=False)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, expected {expect}:\n{done.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(command: list[str], env: dict[str, str], runs: int, expect: int = 0, cwd: Path = ROOT) -> dict[str, Any]:
    timed(command, env, expect, cwd)  # warm-up, not counted
    results = [timed(command, env, expect, cwd) for _ in range(runs)]
    times = [wall for wall, _ in results]
    return {
        "command": " ".join(command),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "cpu_median_s": round(statistics.median(cpu for _, cpu in results), 3),
        "runs": [round(t, 3) for t in times],
    }


def cpu() -> dict[str, Any]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and not model:
                model = line.partition(":")[2].strip()
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in flags]}


def commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=ROOT / "index_data" / "sample")
    parser.add_argument("--query", default="x")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="Skip the torch-path baseline (the slowest part).")
    parser.add_argument(
        "--old-tree",
        type=Path,
        default=None,
        help="A checkout of an older commit (git archive REV | tar -x -C DIR): its search, run the same way, is "
        "the old_path baseline.",
    )
    args = parser.parse_args()
    if not (args.index / "manifest.json").is_file():
        raise SystemExit(f"no index at {args.index}: newsdesk index index_data/sample.jsonl --index {args.index}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cli, index = newsdesk(), str(args.index)
    load_before = os.getloadavg()[0]
    figures: dict[str, Any] = {
        "python_startup": measure([sys.executable, "-c", "pass"], env, args.runs),
        "search": measure([*cli, "search", args.query, "--index", index], env, args.runs),
        "invalid_argument": measure([*cli, "search", args.query, "--index", index, "--k", "0"], env, args.runs, 1),
        "missing_index": measure([*cli, "search", args.query, "--index", "/nonexistent/index"], env, args.runs, 1),
    }
    if not args.no_torch:
        torch_path = [*cli, "search", args.query, "--index", index, "--backend", "torch"]
        figures["torch_path"] = measure(torch_path, env, args.runs)
    if args.old_tree is not None:
        old_env = {**env, "PYTHONPATH": str(args.old_tree.resolve())}
        old = [sys.executable, "-m", "api.cli", "search", args.query, "--index", str(args.index.resolve())]
        figures["old_path"] = measure(old, old_env, args.runs, cwd=args.old_tree.resolve())  # cwd: sys.path[0]
        figures["old_path"]["tree"] = str(args.old_tree)
    load_after = os.getloadavg()[0]
    search = figures["search"]["median_s"]
    report = {
        **figures,
        "ratios": {
            "search_over_python_startup": round(search / figures["python_startup"]["median_s"], 2),
            **(
                {"search_cpu_over_torch_path_cpu": round(figures["search"]["cpu_median_s"] / torch_cpu, 3)}
                if (torch_cpu := figures.get("torch_path", {}).get("cpu_median_s"))
                else {}
            ),
            **(
                {"search_over_torch_path": round(search / figures["torch_path"]["median_s"], 3)}
                if "torch_path" in figures
                else {}
            ),
            **(
                {"search_over_old_path": round(search / figures["old_path"]["median_s"], 3)}
                if "old_path" in figures
                else {}
            ),
        },
        "targets": {
            "search_under_3s": search < SEARCH_TARGET_S,
            "search_cpu_under_3s": figures["search"]["cpu_median_s"] < SEARCH_TARGET_S,
            "mistake_under_1s": max(figures["invalid_argument"]["median_s"], figures["missing_index"]["median_s"])
            < MISTAKE_TARGET_S,
        },
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "cpu": cpu(),
        "commit": commit(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
