"""A bounded load test mixing searches with live writes on 127.0.0.1 (issue 7, acceptance criterion 2).

One command runs the whole benchmark::

    .venv/bin/python bench/load.py --index DIR --rtqa ../shared/data/realtimeqa --seconds 120

1. The index is copied (its resolved directory: ``index_data/<name>`` is a symlink to a versioned sibling) into a
   temporary directory, because the writer changes it: the benchmark never writes to the index it was given;
2. ``newsdesk serve --index <copy> --host 127.0.0.1 --port <free port> --workers W [--processes P]`` starts in its
   own process group with ``NEWSDESK_API_KEY`` set to a random key for this run only (bench/serve.py's ``Server``
   for waiting, log tail and stopping);
3. first, for ``--baseline-seconds`` (default 30), the readers alone (search without writes, for comparison); then
   for ``--seconds``: ``--readers`` threads, each with its own keep-alive connection, send ``GET /api/search`` back
   to back with query texts no other request of the run carries (bench/serve.py's ``QueryFeed``), while one writer
   thread posts batches of ``--batch`` generated articles to ``POST /api/articles`` with the key and records every
   acknowledged (HTTP 200) id with its headline;
4. afterwards, every acknowledged article must be found by id (``GET /api/articles/<id>``, the stored headline and
   paragraphs equal to what was sent) and by a query on its headline (``GET /api/search?q=<headline>&k=10``: the id
   among the results' article ids or their ``also_reported`` ids); then the server stops and
   ``newsdesk check --index <copy>`` runs on what the writes left behind;
5. the JSON report is printed and written to ``--out``; exit status 1 on any request error, any failed
   verification, no acknowledged write at all, or a failed check.

Generated articles are synthetic but shaped like local news (a town, an institution, a project, a reason; two or
three paragraphs with a quote and figures), deterministic for a ``--seed``, with headlines that never repeat within
a run and bodies varied enough that the near-duplicate rules (5-word shingles) do not fold them into each other.
The readers and the writer share the machine with the server: on 2 cores they take CPU from it.

``ArticleFactory``, ``headline_rank``, ``article_problem``, ``split_by_writes``, ``acceptance`` and
``build_report`` are pure and importable (``tests/test_bench_load.py``).
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scifact import (  # noqa: E402
    BenchError,
    child_env,
    git_commit,
    git_dirty,
    loadavg,
    newsdesk_exe,
    newsdesk_settings_env,
    write_report,
)
from bench.serve import (  # noqa: E402
    HOST,
    MAX_ERROR_MESSAGES,
    REQUEST_TIMEOUT,
    QueryFeed,
    Server,
    TargetRun,
    get,
    log_tail,
    percentile,
    read_query_texts,
    summarize,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "load.json"
# A write embeds its passages before it commits, on the same 2 cores the readers load, so it may take far longer
# than a search; it is still an error if it takes this long.
WRITE_TIMEOUT = 120.0
MAX_FAILURE_MESSAGES = 10
SECRET_SETTINGS = frozenset({"NEWSDESK_API_KEY", "NEWSDESK_READ_API_KEY"})
TARGET: dict[str, Any] = {
    "description": (
        "8 concurrent readers + 1 writer for 120 s: 0 errors, every written article found by id and by a query on "
        "its headline afterwards; search p99 reported"
    ),
    "min_readers": 8,
    "writers": 1,
    "min_seconds": 120.0,
}

# -- generated articles (pure) ------------------------------------------------------------------------------------

TOWN_HEADS = (
    "Ash Bram Cald Dun Elder Fern Glen Hart Ivel Kel Lang Marl Nether Oak Pen Quen Raven Stan Thorn Ulls Ver Wex Yar"
    " Zen Brock Corran"
).split()
TOWN_TAILS = "bury ford ton wick mouth field haven stead moor bridge holm dale combe port worth gate".split()
SUBJECTS = (
    "council",
    "hospital trust",
    "water board",
    "school district",
    "port authority",
    "rail operator",
    "police service",
    "university",
    "housing association",
    "energy cooperative",
    "farmers' union",
    "transit agency",
    "fire service",
    "library service",
)
ACTIONS = (  # (headline, past tense)
    ("approves", "approved"),
    ("rejects", "rejected"),
    ("delays", "delayed"),
    ("unveils", "unveiled"),
    ("expands", "expanded"),
    ("suspends", "suspended"),
    ("funds", "funded"),
    ("reviews", "reviewed"),
    ("scraps", "scrapped"),
    ("fast-tracks", "fast-tracked"),
)
PROJECTS = (
    "flood barrier",
    "tram extension",
    "solar farm",
    "library renovation",
    "affordable housing plan",
    "bridge repair",
    "night bus service",
    "recycling scheme",
    "maternity ward",
    "cycle lane network",
    "desalination plant",
    "wind turbine project",
    "harbour dredging",
    "school meals programme",
    "heat pump grants",
)
REASONS = (
    "after storm damage",
    "amid budget dispute",
    "following public vote",
    "as costs climb",
    "despite protests",
    "ahead of winter",
    "after safety audit",
    "under new leadership",
    "after record demand",
    "in surprise reversal",
)
FIRST_NAMES = (
    "Amara Bryn Carys Dafydd Esme Farid Greta Hamish Ines Jonas Keziah Lior Maren Niall Odette Priya Rafe Saoirse"
    " Tobias Wren"
).split()
LAST_NAMES = (
    "Achterberg Blackwood Castellano Drummond Eriksen Fairweather Gallagher Hollis Iqbal Jankowski Kowalczyk"
    " Lindqvist Mbeki Novak Okonkwo Pemberton Quigley Rasmussen Szabo Thackeray"
).split()
ROLES = ("chief executive", "spokeswoman", "spokesman", "finance director", "chair", "deputy leader", "head of works")
STREETS = (
    "Mill Lane",
    "Station Road",
    "Quayside",
    "Orchard Row",
    "Tanner Street",
    "Abbey Walk",
    "Canal Terrace",
    "Bell Yard",
    "Foundry Hill",
    "Marsh End",
)
LANDMARKS = (
    "the old cannery",
    "the market hall",
    "the ferry terminal",
    "the town museum",
    "the bus depot",
    "the cricket ground",
    "the lifeboat station",
    "the cathedral close",
)
FUNDERS = (
    "the regional development fund",
    "a national infrastructure grant",
    "local business rates",
    "a green bond issue",
    "a charitable foundation",
    "the lottery heritage fund",
)
FIRMS = ("Halden Partners", "Crossway Audit", "Meridian Civic", "Tallis & Rowe", "Northgate Consulting")
RISKS = (
    "rising steel prices",
    "a shortage of electricians",
    "planning appeals",
    "ground contamination",
    "delays to grid connections",
)
VERDICTS = ("reckless", "overdue", "half-baked", "ambitious", "unaffordable", "long promised")
DEMANDS = (
    "a referendum",
    "a fresh cost estimate",
    "an independent inquiry",
    "a six-month pause",
    "published contracts",
)
QUOTES = (
    "We have listened to every objection and this is the right balance",
    "Nobody pretends this is cheap, but waiting would cost more",
    "This is what residents asked us for, year after year",
    "The numbers simply did not add up this time",
    "We owe it to the next generation to get this right",
    "I understand the frustration, and we will keep talking",
    "Frankly, the old arrangement was failing people",
)
FOLLOWUPS = (
    "work could begin in {month}",
    "a consultation would open within {weeks} weeks",
    "contracts would be tendered before {month}",
    "a progress report is due in {month}",
    "the first phase should finish by {month}",
)
MONTHS = "January February March April May June July August September October November December".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
SOURCES = ("Northern Ledger", "Coastal Courier", "Valley Gazette", "Metro Wire")
CATEGORIES = ("local", "infrastructure", "politics", "health", "environment")
EPOCH = date(2025, 1, 1)


@dataclass(frozen=True)
class GeneratedArticle:
    """One synthetic article as the writer sends it (fields already in the form the API stores them)."""

    id: str
    title: str
    paragraphs: tuple[str, ...]
    date: str
    source: str
    tags: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "paragraphs": list(self.paragraphs),
            "date": self.date,
            "source": self.source,
            "tags": list(self.tags),
        }


class ArticleFactory:
    """Articles ``<prefix>-<n>`` (``n`` from 0), the same sequence for the same seed, no headline twice.

    Every slot of the templates is drawn per article, and the fixed stretches between slots are short, so two
    articles share few 5-word shingles (the near-duplicate rules would otherwise fold them into one group and the
    benchmark would measure ``also_reported`` instead of search). The town name (26 x 16 made-up names) and the
    full combination of institution, action, project and reason (about 8M headlines) make each headline a query its
    own article answers best.
    """

    def __init__(self, prefix: str, seed: int) -> None:
        self.prefix = prefix
        self._rng = random.Random(seed)
        self._next = 0
        self._headlines: set[str] = set()

    def take(self, n: int) -> list[GeneratedArticle]:
        return [self._one() for _ in range(n)]

    def _one(self) -> GeneratedArticle:
        rng = self._rng
        while True:
            town = rng.choice(TOWN_HEADS) + rng.choice(TOWN_TAILS)
            subject = rng.choice(SUBJECTS)
            action, past = rng.choice(ACTIONS)
            project = rng.choice(PROJECTS)
            reason = rng.choice(REASONS)
            title = f"{town} {subject} {action} {project} {reason}"
            if title not in self._headlines:
                break
        self._headlines.add(title)
        slots = {
            "town": town,
            "subject": subject,
            "past": past,
            "project": project,
            "reason": reason,
            "person": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "other": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "role": rng.choice(ROLES),
            "weekday": rng.choice(WEEKDAYS),
            "month": rng.choice(MONTHS),
            "weeks": str(rng.randint(2, 12)),
            "months": str(rng.randint(3, 30)),
            "hours": str(rng.randint(2, 9)),
            "households": f"{rng.randint(300, 48000):,}",
            "signatures": f"{rng.randint(400, 20000):,}",
            "districts": str(rng.randint(2, 14)),
            "yes": str(rng.randint(9, 30)),
            "no": str(rng.randint(1, 8)),
            "street": rng.choice(STREETS),
            "landmark": rng.choice(LANDMARKS),
            "amount": f"{rng.randint(2, 480)}.{rng.randint(0, 9)}",
            "percent": str(rng.randint(10, 90)),
            "funder": rng.choice(FUNDERS),
            "firm": rng.choice(FIRMS),
            "risk": rng.choice(RISKS),
            "verdict": rng.choice(VERDICTS),
            "demand": rng.choice(DEMANDS),
            "quote": rng.choice(QUOTES),
        }
        slots["followup"] = rng.choice(FOLLOWUPS).format(**slots)
        lede = rng.choice(
            (
                "{town}'s {subject} {past} the {project} on {weekday} {reason}, affecting {households} households.",
                "Officials at the {subject} in {town} {past} the {project} late on {weekday} {reason}.",
                "After {hours} hours of debate on {weekday}, the {town} {subject} {past} the {project} {reason}.",
                "The {project} in {town} was {past} by the {subject} on {weekday} {reason}, ending {weeks} weeks "
                "of uncertainty.",
            )
        )
        detail = rng.choice(
            (
                "{districts} districts, from {street} to {landmark}, fall within the plan.",
                "Residents near {street} had lobbied for {months} months, gathering {signatures} signatures.",
                "The vote was {yes} to {no}; {households} homes near {street} are affected.",
                "Traders on {street} expect disruption around {landmark} for {months} months.",
            )
        )
        quote_par = rng.choice(
            (
                '"{quote}," said {person}, {role} of the {subject}, adding that {followup}.',
                '{person}, the {subject}\'s {role}, told reporters near {landmark} that {followup}. "{quote}."',
                'Speaking outside {landmark}, {person} ({role}) said: "{quote}." {followup_cap}.',
            )
        )
        slots["followup_cap"] = slots["followup"][0].upper() + slots["followup"][1:]
        background = [
            "The budget for the {project} stands at {amount} million, {percent} percent of it from {funder}.",
            "A review by {firm} put the bill at {amount} million and warned of {risk}.",
            "Opposition member {other} called the {project} {verdict} and asked for {demand}.",
        ]
        rng.shuffle(background)
        paragraphs = [f"{lede} {detail}", quote_par]
        if rng.random() < 0.5:
            paragraphs.append(" ".join(background[:2]))
        else:
            paragraphs[1] = f"{quote_par} {background[0]}"
        n = self._next
        self._next += 1
        day = EPOCH + timedelta(days=rng.randint(0, 364))
        return GeneratedArticle(
            id=f"{self.prefix}-{n}",
            title=title[0].upper() + title[1:],
            paragraphs=tuple(" ".join(p.format(**slots).split()) for p in paragraphs),
            date=day.isoformat(),
            source=rng.choice(SOURCES),
            tags=(rng.choice(CATEGORIES),),
        )


# -- checking what the server answers (pure) ----------------------------------------------------------------------


def headline_rank(status: int, body: bytes, article_id: str) -> tuple[int | None, str | None]:
    """Where ``article_id`` is in a search response: ``(rank, None)`` with the 1-based rank of the result that is
    the article or lists it in ``also_reported`` (a duplicate group shows one copy), else ``(None, problem)``."""
    if status != 200:
        return None, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        results = json.loads(body)["results"]
        for rank, result in enumerate(results, 1):
            ids = [result["article"]["id"], *(r["id"] for r in result.get("also_reported") or [])]
            if article_id in ids:
                return rank, None
        shown = [r["article"]["id"] for r in results]
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"unexpected search body: {exc!r}"
    return None, f"not among the {len(shown)} results {shown[:10]}"


def article_problem(status: int, body: bytes, expected: GeneratedArticle) -> str | None:
    """``None`` when ``GET /api/articles/<id>`` returned the article as it was written, else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        got = json.loads(body)
        if got["id"] != expected.id:
            return f"another article came back: {got['id']!r}"
        if got["title"] != expected.title:
            return f"stored headline {got['title']!r} differs from the one written"
        if list(got["paragraphs"]) != list(expected.paragraphs):
            return "stored paragraphs differ from the ones written"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unexpected article body: {exc!r}"
    return None


@dataclass
class Verification:
    """Every acknowledged article looked up by id and by its headline after the timed phase."""

    articles: int = 0
    by_id_failed: int = 0
    by_headline_failed: int = 0
    failed_articles: int = 0
    ranks: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, article_id: str, id_problem: str | None, rank: int | None, query_problem: str | None) -> None:
        self.articles += 1
        self.by_id_failed += id_problem is not None
        self.by_headline_failed += rank is None
        self.failed_articles += id_problem is not None or rank is None
        if rank is not None:
            self.ranks.append(rank)
        for kind, problem in (("by id", id_problem), ("by headline", query_problem)):
            if problem is not None and len(self.failures) < MAX_FAILURE_MESSAGES:
                self.failures.append(f"{article_id} {kind}: {problem}")

    def as_dict(self) -> dict[str, Any]:
        ranks = self.ranks
        return {
            "articles": self.articles,
            "found_by_id": self.articles - self.by_id_failed,
            "found_by_headline": self.articles - self.by_headline_failed,
            "by_id_failed": self.by_id_failed,
            "by_headline_failed": self.by_headline_failed,
            "failed_articles": self.failed_articles,
            "headline_rank": {
                "first": sum(r == 1 for r in ranks),
                "p99": percentile(ranks, 99),
                "max": max(ranks) if ranks else None,
            },
            "failures": self.failures,
            "seconds": round(self.seconds, 2),
        }


def split_by_writes(
    samples: Sequence[tuple[float, float]], writes: Sequence[tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """Search latencies (ms) of requests that overlapped a write request, and of those that did not.

    ``samples`` are ``(start, ms)`` on ``time.perf_counter``; ``writes`` are ``(start, end)`` of one writer's
    requests, so they do not overlap each other and the last write starting before a search ends is the only one
    that can overlap it. Says whether writes slow searches down, which the overall percentiles hide.
    """
    spans = sorted(writes)
    starts = [s for s, _ in spans]
    during: list[float] = []
    between: list[float] = []
    for start, ms in samples:
        end = start + ms / 1000
        i = bisect.bisect_left(starts, end) - 1
        (during if i >= 0 and spans[i][1] > start else between).append(ms)
    return during, between


def _latency_block(values: Sequence[float]) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "requests": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
    }


def _versus(mixed: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Search with the writer running over search without it (same server, readers and query list)."""
    if baseline is None:
        return None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    return {
        "p50": ratio(mixed["latency_ms"]["p50"], baseline["latency_ms"]["p50"]),
        "p99": ratio(mixed["latency_ms"]["p99"], baseline["latency_ms"]["p99"]),
        "throughput": ratio(mixed["throughput_rps"], baseline["throughput_rps"]),
    }


def acceptance(
    *,
    readers: int,
    writers: int,
    seconds: float,
    search_errors: int,
    write_errors: int,
    written: int,
    verification: Mapping[str, Any],
    check_status: int | None,
) -> dict[str, Any]:
    """Issue 7's criterion 2 judged on this run: each condition and figure true or false, never assumed."""
    conditions = {
        "readers": readers,
        "readers_ok": readers >= TARGET["min_readers"],
        "writers": writers,
        "writers_ok": writers == TARGET["writers"],
        "seconds": seconds,
        "seconds_ok": seconds >= TARGET["min_seconds"],
    }
    checks = {
        "errors": search_errors + write_errors,
        "errors_ok": search_errors + write_errors == 0,
        "articles_written": written,
        "written_ok": written > 0,  # "every written article was found" says nothing when none was written
        "all_found_by_id": written > 0 and verification.get("by_id_failed") == 0,
        "all_found_by_headline": written > 0 and verification.get("by_headline_failed") == 0,
        "check_exit_status": check_status,
        "check_ok": check_status == 0,
    }
    figures_met = all(checks[k] for k in ("errors_ok", "written_ok", "all_found_by_id", "all_found_by_headline"))
    figures_met = figures_met and bool(checks["check_ok"])
    conditions_met = bool(conditions["readers_ok"] and conditions["writers_ok"] and conditions["seconds_ok"])
    notes = [] if conditions_met else ["this run is not under the criterion's conditions, so it cannot meet it"]
    return {
        "target": TARGET["description"],
        "conditions": conditions,
        **checks,
        "figures_met": figures_met,
        "conditions_met": conditions_met,
        "met": figures_met and conditions_met,
        "notes": notes,
    }


def build_report(
    *,
    readers: int,
    seconds: float,
    k: int,
    batch: int,
    write_interval: float,
    search: TargetRun,
    reads_only: TargetRun | None,
    search_samples: Sequence[tuple[float, float]],
    writes: TargetRun,
    write_spans: Sequence[tuple[float, float]],
    articles_written: int,
    verification: Verification,
    check: Mapping[str, Any],
    server: Mapping[str, Any],
    index: Mapping[str, Any],
    queries: Mapping[str, Any],
    machine: Mapping[str, Any],
    generator: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON report: load, search and write figures, verification, check, acceptance (no I/O)."""
    search_summary = summarize(search)
    write_summary = summarize(writes)
    write_summary["articles_written"] = articles_written
    write_summary["articles_per_s"] = round(articles_written / writes.elapsed_s, 2) if writes.elapsed_s > 0 else None
    during, between = split_by_writes(search_samples, write_spans)
    search_summary["while_writing"] = _latency_block(during)
    search_summary["between_writes"] = _latency_block(between)
    search_errors = search.errors + search.warmup_errors
    baseline = summarize(reads_only) if reads_only is not None else None
    baseline_errors = reads_only.errors + reads_only.warmup_errors if reads_only is not None else 0
    ver = verification.as_dict()
    check_status = check.get("exit_status")
    return {
        "benchmark": "load",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": dict(machine),
        "server": dict(server),
        "index": dict(index),
        "load": {
            "readers": readers,
            "writers": 1,
            "seconds": seconds,
            "reads_only_seconds": reads_only.elapsed_s if reads_only is not None else 0.0,
            "k": k,
            "batch": batch,
            "write_interval": write_interval,
        },
        "queries": dict(queries),
        "generator": dict(generator),
        "search": search_summary,
        "writes": write_summary,
        "search_reads_only": baseline,
        "search_vs_reads_only": _versus(search_summary, baseline),
        "errors": {
            "search": search_errors,
            "write": writes.errors,
            "reads_only": baseline_errors,
            "total": search_errors + writes.errors + baseline_errors,
        },
        "verification": ver,
        "check": dict(check),
        "acceptance": acceptance(
            readers=readers,
            writers=1,
            seconds=seconds,
            search_errors=search_errors,
            write_errors=writes.errors,
            written=articles_written,
            verification=ver,
            check_status=check_status if isinstance(check_status, int) else None,
        ),
    }


def failed(report: Mapping[str, Any]) -> list[str]:
    """Why the run counts as failed (exit status 1); empty when it passed."""
    out = []
    if report["errors"]["total"]:
        out.append(f"{report['errors']['total']} requests failed (search.error_messages, writes.error_messages)")
    if not report["writes"]["articles_written"]:
        out.append("no write was acknowledged, so nothing could be verified")
    if report["verification"]["failed_articles"]:
        out.append(f"{report['verification']['failed_articles']} written articles failed verification")
    if report["check"].get("exit_status") != 0:
        out.append(f"newsdesk check exited with {report['check'].get('exit_status')}")
    return out


def redacted_settings_env() -> dict[str, str]:
    """``NEWSDESK_*`` settings of this process for the report, keys replaced: a report is no place for a key."""
    return {k: ("<set>" if k in SECRET_SETTINGS else v) for k, v in newsdesk_settings_env().items()}


# -- the server ---------------------------------------------------------------------------------------------------


def copy_index(index: Path, dest: Path) -> dict[str, Any]:
    """Copy the index's resolved directory to ``dest`` (a plain directory, never a link back to the original)."""
    resolved = index.resolve()
    if not (resolved / "manifest.json").is_file():
        raise BenchError(f"{index}: not an index (no manifest.json)")
    started = time.perf_counter()
    shutil.copytree(resolved, dest, symlinks=False)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {
        "given": str(index),
        "resolved": str(resolved),
        "copy": str(dest),
        "copy_mib": round(size / 2**20, 1),
        "copy_seconds": round(time.perf_counter() - started, 2),
    }


def run_check(index: Path, timeout: float) -> dict[str, Any]:
    """``newsdesk check --index INDEX``: its exit status (``None`` on a timeout) and the tail of its output."""
    cmd = [newsdesk_exe(), "check", "--index", str(index)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        status: int | None = proc.returncode
        output = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
    except subprocess.TimeoutExpired:
        status, output = None, [f"timed out after {timeout:.0f} s"]
    return {
        "command": cmd,
        "exit_status": status,
        "seconds": round(time.perf_counter() - started, 2),
        "output": output,
    }


# -- the load -----------------------------------------------------------------------------------------------------


class _Tally:
    """Errors of one side (readers or writer), shared by its threads."""

    def __init__(self, run: TargetRun) -> None:
        self.run = run
        self.lock = threading.Lock()

    def error(self, message: str, warmup: bool = False) -> None:
        with self.lock:
            if warmup:
                self.run.warmup_errors += 1
            else:
                self.run.errors += 1
            if len(self.run.error_messages) < MAX_ERROR_MESSAGES:
                self.run.error_messages.append(("warm-up: " if warmup else "") + message)


@dataclass
class _Written:
    article: GeneratedArticle
    generation: int | None


def _search_path(text: str, k: int) -> str:
    return "/api/search?" + urlencode({"q": text, "k": k})


def _search_once(conn: http.client.HTTPConnection, path: str, tally: _Tally, warmup: bool) -> float | None:
    """One search; its latency in ms, or ``None`` with the error recorded (and the connection reset)."""
    started = time.perf_counter()
    try:
        status, body = get(conn, path)
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # http.client reconnects on the next request
        tally.error(f"{path[:80]}: {type(exc).__name__}: {exc}", warmup)
        return None
    if not 200 <= status < 300:
        tally.error(f"{path[:80]}: HTTP {status}: {body[:200].decode('utf-8', 'replace')}", warmup)
        return None
    return (time.perf_counter() - started) * 1000


def _post_batch(
    conn: http.client.HTTPConnection, key: str, batch: Sequence[GeneratedArticle]
) -> tuple[int, bytes, float, float]:
    body = json.dumps({"articles": [a.payload() for a in batch]}, ensure_ascii=False).encode("utf-8")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    conn.request("POST", "/api/articles", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, data, started, time.perf_counter()


def acknowledged(status: int, body: bytes, batch: Sequence[GeneratedArticle]) -> tuple[int | None, str | None]:
    """``(generation, None)`` when the server acknowledged exactly this batch, else ``(None, problem)``."""
    if status != 200:
        return None, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    try:
        got = json.loads(body)
        written = list(got["written"])
        generation = got.get("generation")
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"unexpected write body: {exc!r}"
    if written != [a.id for a in batch]:
        return None, f"acknowledged {written[:3]}... for a batch of {[a.id for a in batch][:3]}..."
    return generation if isinstance(generation, int) else None, None


@dataclass
class LoadResult:
    search: TargetRun
    search_samples: list[tuple[float, float]]
    writes: TargetRun
    write_spans: list[tuple[float, float]]
    written: list[_Written]


def run_load(
    port: int,
    key: str,
    feed: QueryFeed,
    factory: ArticleFactory,
    *,
    readers: int,
    seconds: float,
    k: int,
    batch: int,
    write_interval: float,
    warmup: int,
    write: bool = True,
) -> LoadResult:
    """Warm-up searches, then ``readers`` search threads and (with ``write``) one writer thread, all for
    ``seconds``. Without ``write`` it is the reads-only baseline the mixed phase is compared with."""
    search = TargetRun(name="search")
    writes = TargetRun(name="write")
    search_tally, write_tally = _Tally(search), _Tally(writes)
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        for _ in range(warmup):
            path = _search_path(feed.take(), k)
            search.example = search.example or path
            _search_once(conn, path, search_tally, warmup=True)
            search.warmup_requests += 1
    finally:
        conn.close()

    barrier = threading.Barrier(readers + 1 + write)
    samples: list[list[tuple[float, float]]] = [[] for _ in range(readers)]
    ends = [0.0] * (readers + 1)
    spans: list[tuple[float, float]] = []
    written: list[_Written] = []

    def reader(i: int) -> None:
        own = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
        try:
            barrier.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                path = _search_path(feed.take(), k)
                search.example = search.example or path  # racy between readers, harmless: any one will do
                started = time.perf_counter()
                ms = _search_once(own, path, search_tally, warmup=False)
                if ms is not None:
                    samples[i].append((started, ms))
        finally:
            ends[i] = time.perf_counter()
            own.close()

    def writer() -> None:
        own = http.client.HTTPConnection(HOST, port, timeout=WRITE_TIMEOUT)
        try:
            barrier.wait()
            begun = time.perf_counter()
            deadline = begun + seconds
            n = 0
            while time.perf_counter() < deadline:
                articles = factory.take(batch)
                writes.example = writes.example or f"POST /api/articles ({batch} articles, ids {articles[0].id}...)"
                try:
                    status, body, started, ended = _post_batch(own, key, articles)
                except (OSError, http.client.HTTPException) as exc:
                    own.close()
                    write_tally.error(f"POST /api/articles {articles[0].id}...: {type(exc).__name__}: {exc}")
                else:
                    spans.append((started, ended))
                    generation, problem = acknowledged(status, body, articles)
                    if problem is None:
                        writes.latencies_ms.append((ended - started) * 1000)
                        written.extend(_Written(a, generation) for a in articles)
                    else:
                        write_tally.error(f"POST /api/articles {articles[0].id}...: {problem}")
                n += 1
                if write_interval > 0:  # a fixed schedule; a write that overruns its slot starts the next at once
                    time.sleep(max(0.0, min(begun + n * write_interval, deadline) - time.perf_counter()))
        finally:
            ends[readers] = time.perf_counter()
            own.close()

    threads = [threading.Thread(target=reader, args=(i,), name=f"reader-{i}", daemon=True) for i in range(readers)]
    if write:
        threads.append(threading.Thread(target=writer, name="writer", daemon=True))
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    search.elapsed_s = max(ends[:readers]) - started
    search.latencies_ms = [ms for per in samples for _, ms in per]
    writes.elapsed_s = ends[readers] - started if write else 0.0
    return LoadResult(search, [s for per in samples for s in per], writes, spans, written)


def verify(port: int, written: Sequence[_Written], k: int) -> Verification:
    """Every acknowledged article by id and by a query on its headline, one request at a time."""
    ver = Verification()
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    started = time.perf_counter()
    try:
        for w in written:
            a = w.article
            try:
                status, body = get(conn, "/api/articles/" + quote(a.id, safe=""))
                id_problem = article_problem(status, body, a)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                id_problem = f"{type(exc).__name__}: {exc}"
            try:
                status, body = get(conn, _search_path(a.title, k))
                rank, query_problem = headline_rank(status, body, a.id)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                rank, query_problem = None, f"{type(exc).__name__}: {exc}"
            ver.record(a.id, id_problem, rank, query_problem)
    finally:
        conn.close()
    ver.seconds = time.perf_counter() - started
    return ver


def _health(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        status, body = get(conn, "/api/health")
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        conn.close()
    if status != 200:
        return {"error": f"HTTP {status}"}
    health: dict[str, Any] = json.loads(body)
    return health


def benchmark(
    index: Path,
    texts: Sequence[str],
    query_source: str,
    *,
    readers: int,
    seconds: float,
    baseline_seconds: float,
    k: int,
    batch: int,
    write_interval: float,
    workers: int,
    processes: int,
    warmup: int,
    seed: int,
    run_id: str,
    start_timeout: float,
    check_timeout: float,
    keep_copy: bool,
) -> dict[str, Any]:
    feed = QueryFeed(texts)
    factory = ArticleFactory(f"load-{run_id}", seed)
    key = secrets.token_urlsafe(24)
    load = {"before": loadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="newsdesk-load-bench-"))
    try:
        copy = tmp / "index"
        index_info = copy_index(index, copy)
        index_info["copy_kept"] = keep_copy
        # the run's write key; a read key inherited from this shell is dropped, so searches need none
        env: dict[str, str | None] = {"NEWSDESK_API_KEY": key, "NEWSDESK_READ_API_KEY": None}
        server = Server(copy, workers, tmp / "server.log", None, processes, env)
        try:
            health_before, startup = server.wait_ready(start_timeout)
            load["start"] = loadavg()
            baseline = None
            if baseline_seconds > 0:
                baseline = run_load(
                    server.port,
                    key,
                    feed,
                    factory,
                    readers=readers,
                    seconds=baseline_seconds,
                    k=k,
                    batch=batch,
                    write_interval=write_interval,
                    warmup=warmup,
                    write=False,
                ).search
                baseline.name = "search:reads-only"
            load["mixed_start"] = loadavg()
            result = run_load(
                server.port,
                key,
                feed,
                factory,
                readers=readers,
                seconds=seconds,
                k=k,
                batch=batch,
                write_interval=write_interval,
                warmup=0 if baseline is not None else warmup,
            )
            load["end"] = loadavg()
            code = server.proc.poll()
            if code is not None:
                raise BenchError(f"the server exited with status {code} during the run; log tail:\n{server.tail()}")
            verification = verify(server.port, result.written, k)
            health_after = _health(server.port)
            errors = result.search.errors + result.search.warmup_errors + result.writes.errors
            errors += baseline.errors + baseline.warmup_errors if baseline is not None else 0
            server_info: dict[str, Any] = {
                "command": server.cmd,
                "processes": processes,
                "workers": workers,
                "startup_seconds": round(startup, 2),
                "log_tail": server.tail() if errors or verification.failed_articles else None,
            }
        finally:
            server.stop()
        check = run_check(copy, check_timeout)  # after the server stopped: what a restart would open
        if check["exit_status"] != 0:
            check["server_log_tail"] = log_tail(server.log)
    finally:
        if keep_copy:
            print(f"kept the index copy and server log in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    before, after = health_before.get("articles"), health_after.get("articles")
    index_info["health_before"] = health_before
    index_info["health_after"] = health_after
    distinct_written = len({w.article.id for w in result.written})
    index_info["articles_added"] = after - before if isinstance(before, int) and isinstance(after, int) else None
    index_info["articles_added_ok"] = index_info["articles_added"] == distinct_written
    taken = feed.position
    queries = {
        "source": query_source,
        "distinct": len(feed.texts),
        "taken": taken,
        "wrapped": feed.wrapped,
        "repeats": feed.repeats_between(0, taken),
    }
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1min": load,
    }
    generations = [w.generation for w in result.written if w.generation is not None]
    report = build_report(
        readers=readers,
        seconds=seconds,
        k=k,
        batch=batch,
        write_interval=write_interval,
        search=result.search,
        reads_only=baseline,
        search_samples=result.search_samples,
        writes=result.writes,
        write_spans=result.write_spans,
        articles_written=distinct_written,
        verification=verification,
        check=check,
        server=server_info,
        index=index_info,
        queries=queries,
        machine=machine,
        generator={
            "run_id": run_id,
            "id_prefix": factory.prefix,
            "seed": seed,
            "generation_first": min(generations) if generations else None,
            "generation_last": max(generations) if generations else None,
        },
    )
    report["git_commit"] = git_commit()
    report["git_dirty"] = git_dirty()
    report["settings_env"] = redacted_settings_env()
    return report


def summary(report: Mapping[str, Any]) -> str:
    s, w, v = report["search"], report["writes"], report["verification"]
    lat = s["latency_ms"]
    base = report.get("search_reads_only")
    reads_only = (
        f"reads only: p50 {base['latency_ms']['p50']} ms p99 {base['latency_ms']['p99']} ms "
        f"{base['throughput_rps']} req/s, {base['errors']} err; "
        if base
        else ""
    )
    return (
        reads_only + f"with writes: search p50 {lat['p50']} ms p99 {lat['p99']} ms {s['throughput_rps']} req/s, "
        f"{s['errors']} err; "
        f"writes {w['ok']} batches / {w['articles_written']} articles, p50 {w['latency_ms']['p50']} ms "
        f"p99 {w['latency_ms']['p99']} ms, {w['errors']} err; verified {v['articles']}: "
        f"{v['by_id_failed']} missing by id, {v['by_headline_failed']} missing by headline; "
        f"check exit {report['check']['exit_status']}; acceptance met: {report['acceptance']['met']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", type=Path, required=True, help="Index to copy and serve (never written to).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", type=Path, help="JSONL of queries ('text' or 'question' field).")
    source.add_argument("--rtqa", type=Path, help="RealTime QA directory (its questions_dev.jsonl is used).")
    parser.add_argument("--readers", type=int, default=8, help="Concurrent search threads (default 8).")
    parser.add_argument("--seconds", type=float, default=120.0, help="Timed seconds (default 120).")
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=30.0,
        help="Reads-only seconds before the mixed phase, to compare search with and without writes (0 to skip).",
    )
    parser.add_argument("--batch", type=int, default=5, help="Articles per write request (default 5).")
    parser.add_argument(
        "--write-interval",
        type=float,
        default=0.0,
        help="Seconds between the starts of write requests (default 0: back to back).",
    )
    parser.add_argument("--k", type=int, default=10, help="Results per search and per verification query.")
    parser.add_argument("--workers", type=int, default=None, help="Server request threads (default readers + 1).")
    parser.add_argument("--processes", type=int, default=1, help="Server processes (default 1: waitress).")
    parser.add_argument("--warmup", type=int, default=5, help="Uncounted searches before the timed phase.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the generated articles (default 1).")
    parser.add_argument("--run", default=None, help="Run id in article ids load-<run>-<n> (default random).")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="Seconds to wait for the server.")
    parser.add_argument("--check-timeout", type=float, default=1800.0, help="Seconds allowed for newsdesk check.")
    parser.add_argument("--keep-copy", action="store_true", help="Keep the index copy and server log (debugging).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Also write the report here ({DEFAULT_OUT}).")
    args = parser.parse_args(argv)
    workers = args.workers if args.workers is not None else args.readers + 1
    if args.readers < 1 or args.seconds <= 0 or args.batch < 1 or args.k < 1 or workers < 1 or args.processes < 1:
        parser.error("--readers, --batch, --k, --workers and --processes must be positive, --seconds > 0")
    if args.write_interval < 0 or args.warmup < 0 or args.baseline_seconds < 0:
        parser.error("--write-interval, --warmup and --baseline-seconds must be >= 0")
    run_id = args.run or secrets.token_hex(3)
    try:
        if args.queries is not None:
            texts, query_source = read_query_texts(args.queries), str(args.queries)
        else:
            path = args.rtqa / "questions_dev.jsonl"
            texts, query_source = read_query_texts(path, ("question",)), str(path)
        report = benchmark(
            args.index.absolute(),
            texts,
            query_source,
            readers=args.readers,
            seconds=args.seconds,
            baseline_seconds=args.baseline_seconds,
            k=args.k,
            batch=args.batch,
            write_interval=args.write_interval,
            workers=workers,
            processes=args.processes,
            warmup=args.warmup,
            seed=args.seed,
            run_id=run_id,
            start_timeout=args.start_timeout,
            check_timeout=args.check_timeout,
            keep_copy=args.keep_copy,
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_report(args.out, report)
    print(summary(report), file=sys.stderr)
    problems = failed(report)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
