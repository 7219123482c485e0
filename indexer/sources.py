"""Reading corpora: JSON Lines (optionally gzipped), CSV, RSS and Atom feeds, HTML pages, WARC crawls, or a
directory of .txt/.md/.html files (the web formats are read by indexer/web.py).

Field names are detected from common spellings and can be overridden with a ``FieldMap``; whatever is not mapped
is kept in the article's ``extra`` metadata rather than thrown away.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, cast

from indexer.web import PAGE_SUFFIXES, Fetcher, Skip, feed_articles, kind_of, page_article, warc_articles
from search.errors import SourceError
from search.jsontypes import JSONObject, JSONValue
from search.models import Article
from search.text.chunking import split_paragraphs
from search.text.dates import parse_date

CANDIDATES: dict[str, tuple[str, ...]] = {
    "id": ("id", "_id", "doc_id", "docid", "article_id"),
    "title": ("title", "headline"),
    "paragraphs": ("paragraphs",),
    "text": ("text", "body", "content"),
    "date": ("date", "publish_date", "published", "published_at", "pubdate"),
    "source": ("source", "outlet", "publisher"),
    "url": ("url", "link"),
    "tags": ("tags", "category", "categories", "topics"),
}
TEXT_SUFFIXES = (".txt", ".md")
DIRECTORY_SUFFIXES = (*TEXT_SUFFIXES, *PAGE_SUFFIXES)


@dataclass(frozen=True)
class FieldMap:
    """Explicit source field names; ``None`` means detect from ``CANDIDATES``."""

    id: str | None = None
    title: str | None = None
    paragraphs: str | None = None
    text: str | None = None
    date: str | None = None
    source: str | None = None
    url: str | None = None
    tags: str | None = None

    def resolve(self, keys: Mapping[str, object]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for f in fields(self):
            explicit = getattr(self, f.name)
            if explicit is not None:
                out[f.name] = explicit
            else:
                out[f.name] = next((c for c in CANDIDATES[f.name] if c in keys), None)
        return out


@dataclass
class ReadReport:
    """What reading the sources could not use, for the run's summary: values that could not be read, per source
    field (``where`` and the raw value; the article keeps the raw value in ``extra``), and the bad records skipped
    under ``--skip-bad-records`` (their messages, with file, line and column)."""

    unreadable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # Records of the web formats (feeds, pages, WARC) that could not be used, always skipped: counts by reason, and
    # one line each (place, reason, detail); notes: what was used in part (an item whose page could not be fetched).
    reasons: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        """One web record left out, counted under ``reason``."""
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.dropped.append(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def note(self, where: str, message: str) -> None:
        self.notes.append(f"{where}: {message}")

    def lines(self, limit: int = 10) -> list[str]:
        """The summary's lines about what could not be used: one per field with unreadable values, then the
        skipped records (the first ``limit`` listed)."""
        out: list[str] = []
        for name, found in self.unreadable.items():
            shown = ", ".join(f"{where} {value!r}" for where, value in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            out.append(
                f"field {name!r}: {len(found)} value(s) could not be read as dates and were indexed undated "
                f"(the raw value is kept in extra.date_raw): {shown}{more}"
            )
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} bad record(s) (--skip-bad-records):")
            out += [f"  {m}" for m in self.skipped[:limit]]
            if len(self.skipped) > limit:
                out.append(f"  and {len(self.skipped) - limit} more")
        if self.reasons:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.reasons.items(), key=lambda x: -x[1]))
            out.append(f"skipped {len(self.dropped)} web record(s) that could not be used: {counts}")
            out += [f"  {m}" for m in self.dropped[:limit]]
            if len(self.dropped) > limit:
                out.append(f"  and {len(self.dropped) - limit} more")
        out += [f"note: {m}" for m in self.notes[:limit]]
        if len(self.notes) > limit:
            out.append(f"note: and {len(self.notes) - limit} more")
        return out


def read_sources(
    paths: list[Path],
    field_map: FieldMap | None = None,
    *,
    report: ReadReport | None = None,
    skip_bad: bool = False,
    fetcher: Fetcher | None = None,
) -> Iterator[Article]:
    """Articles from every source in order. A bad record is a ``SourceError`` naming its file, line and column, or,
    with ``skip_bad``, is left out and listed in ``report.skipped``; a file that cannot be read at all is an error
    either way. Values that could not be read (dates) are collected in ``report.unreadable``.

    Feeds, pages and WARC crawls (indexer/web.py) are recognised by suffix, else by their first bytes; their
    unusable records are always skipped, counted by reason in ``report.reasons``: one broken page of a crawl must
    not cost the others. ``fetcher`` fetches the page of a feed item that carries only a summary."""
    fm = field_map or FieldMap()
    report = report if report is not None else ReadReport()
    for path in paths:
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory")
        if path.is_dir():
            yield from _read_directory(path, report)
            continue
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
            yield from _read_jsonl(path, fm, report, skip_bad)
        elif name.endswith((".csv", ".csv.gz")):
            yield from _read_csv(path, fm, report, skip_bad)
        else:
            yield from _read_web(path, report, fetcher)


def _read_web(path: Path, report: ReadReport, fetcher: Fetcher | None) -> Iterator[Article]:
    """A feed, a page or a WARC crawl, told apart by suffix, else by content."""
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    kind = kind_of(path.name, head)
    if kind is None:
        raise SourceError(
            f"{path}: unknown source format (expected .jsonl, .jsonl.gz, .csv, an RSS or Atom feed, an HTML page, "
            ".warc or .warc.gz, or a directory)"
        )
    if kind == "warc":
        with path.open("rb") as fh:
            yield from warc_articles(fh, str(path), report)
        return
    data = path.read_bytes()
    if kind == "feed":
        yield from feed_articles(data, str(path), report, fetcher)
        return
    try:
        yield page_article(data, None, str(path), fallback_id=path.stem)
    except Skip as skip:
        report.skip(str(path), skip.reason, skip.detail)


def _open_text(path: Path) -> IO[str]:
    try:
        if path.name.lower().endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None


def _open_binary(path: Path) -> IO[bytes]:
    try:
        if path.name.lower().endswith(".gz"):
            return cast(IO[bytes], gzip.open(path, "rb"))
        return path.open("rb")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None


def jsonl_records(path: Path) -> Iterator[tuple[int, JSONObject | SourceError]]:
    """(line number, object or the error that line is) of every non-blank line of a ``.jsonl``/``.jsonl.gz`` file.

    Lines are split on ``\\n`` bytes and each is decoded by itself, so a place is the line an editor shows: decoding
    the file as a text stream reported a bad byte at the line where its read-ahead buffer began (two lines early),
    and split lines on a lone ``\\r`` as well. An unreadable file (bad gzip data, an I/O error) raises."""
    with _open_binary(path) as fh:
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, _json_line(path, lineno, raw)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise SourceError(f"{path}:{lineno + 1}: unreadable ({exc})") from None


def _json_line(path: Path, lineno: int, raw: bytes) -> JSONObject | SourceError:
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
        return SourceError(f"{path}:{lineno}:{column}: not UTF-8 text (byte 0x{raw[exc.start]:02x}: {exc.reason})")
    if not line.strip():
        return {}
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return SourceError(f"{path}:{lineno}:{exc.colno}: invalid JSON: {_json_reason(exc, line)}")
    except RecursionError:
        return SourceError(f"{path}:{lineno}: invalid JSON: nested too deeply")
    if not isinstance(record, dict):
        return SourceError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _json_reason(exc: json.JSONDecodeError, line: str) -> str:
    """json's message made whole: the ones ending in "at" (``Invalid control character at``) name the character."""
    if not exc.msg.endswith(" at"):
        return exc.msg
    char = line[exc.pos] if exc.pos < len(line) else ""
    named = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}.get(char, "")
    what = f"U+{ord(char):04X}{f' ({named})' if named else ''}" if char else "end of line"
    hint = " (control characters must be escaped inside a JSON string, e.g. \\t)" if char and ord(char) < 32 else ""
    return f"{exc.msg[:-3]} {what}{hint}"


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, JSONObject]]:
    """(line number, object) of every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file; a line that is not a
    JSON object, or an unreadable file, is a ``SourceError`` naming the file, line and column."""
    for lineno, record in jsonl_records(path):
        if isinstance(record, SourceError):
            raise record
        if record:
            yield lineno, record


def _bad(error: SourceError, report: ReadReport, skip_bad: bool) -> None:
    """A bad record: an error, or (``--skip-bad-records``) one more line of the summary."""
    if not skip_bad:
        raise error
    report.skipped.append(error.message)


def _read_jsonl(path: Path, fm: FieldMap, report: ReadReport, skip_bad: bool) -> Iterator[Article]:
    for lineno, record in jsonl_records(path):
        if isinstance(record, SourceError):
            _bad(record, report, skip_bad)
            continue
        if not record:
            continue
        try:
            article = to_article(record, fm, f"{path}:{lineno}", report)
        except SourceError as exc:
            _bad(exc, report, skip_bad)
            continue
        if article is not None:
            yield article


def _read_csv(path: Path, fm: FieldMap, report: ReadReport, skip_bad: bool) -> Iterator[Article]:
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as fh:
        try:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise SourceError(f"{path}: empty CSV (no header row)")
            for row in reader:
                record = {k: v for k, v in row.items() if k is not None}
                try:
                    article = to_article(record, fm, f"{path}:{reader.line_num}", report)
                except SourceError as exc:
                    _bad(exc, report, skip_bad)
                    continue
                if article is not None:
                    yield article
        except csv.Error as exc:
            raise SourceError(f"{path}: malformed CSV ({exc})") from None
        except (UnicodeDecodeError, EOFError, OSError) as exc:
            raise SourceError(f"{path}: unreadable ({exc})") from None


def _read_directory(root: Path, report: ReadReport) -> Iterator[Article]:
    """Text and Markdown files (first line: the headline) and saved HTML pages (their URL as id when the page
    names one, else the path as for text files) of a directory tree, in path order."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DIRECTORY_SUFFIXES)
    for f in files:
        rel = f.relative_to(root).with_suffix("").as_posix()
        if f.suffix.lower() in PAGE_SUFFIXES:
            try:
                yield page_article(f.read_bytes(), None, str(f), fallback_id=rel)
            except Skip as skip:
                report.skip(str(f), skip.reason, skip.detail)
            except OSError as exc:
                raise SourceError(f"{f}: unreadable ({exc})") from None
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{f}: unreadable ({exc})") from None
        lines = text.replace("\r\n", "\n").split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        if not lines:
            continue
        title = lines[0].strip().lstrip("#").strip() if f.suffix.lower() == ".md" else lines[0].strip()
        yield Article(id=rel, title=title, paragraphs=tuple(split_paragraphs("\n".join(lines[1:]))))


def to_article(
    record: Mapping[str, JSONValue], fm: FieldMap, where: str, report: ReadReport | None = None
) -> Article | None:
    """One record as an Article, or None when it has neither headline nor text (empty scraped pages). A date that
    cannot be read is kept raw in ``extra["date_raw"]`` and listed in ``report``."""
    keys = fm.resolve(record)
    for name, key in vars(fm).items():
        if key is not None and key not in record:
            raise SourceError(f"{where}: field {key!r} (given for {name}) is not in the record")
    title = _text(record.get(keys["title"])) if keys["title"] else ""
    paragraphs: list[str] = []
    if keys["paragraphs"] and isinstance(record.get(keys["paragraphs"]), list):
        paragraphs = [p for p in (_text(x).strip() for x in record[keys["paragraphs"]]) if p]
    if not paragraphs and keys["text"]:
        paragraphs = split_paragraphs(_text(record.get(keys["text"])))
    title = " ".join(title.split())
    if not title and not paragraphs:
        return None
    raw_id = record.get(keys["id"]) if keys["id"] else None
    used = {k for k in keys.values() if k}
    extra = {k: v for k, v in record.items() if k not in used and v not in (None, "", [])}
    iso_date, raw_date = _date(record.get(keys["date"]) if keys["date"] else None)
    if raw_date is not None:
        extra["date_raw"] = raw_date
        if report is not None and keys["date"]:
            report.unreadable.setdefault(keys["date"], []).append((where, raw_date))
    article = Article(
        id="",
        title=title,
        paragraphs=tuple(paragraphs),
        date=iso_date,
        source=_opt(record.get(keys["source"])) if keys["source"] else None,
        url=_opt(record.get(keys["url"])) if keys["url"] else None,
        tags=_tags(record.get(keys["tags"])) if keys["tags"] else (),
        extra=extra,
    )
    article_id = _opt(raw_id) or article.content_hash()[:16]
    return Article(**{**vars(article), "id": article_id})


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _opt(value: object) -> str | None:
    text = _text(value).strip()
    return text or None


def _tags(value: object) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(t.strip() for t in str(value).replace(";", ",").split(",") if t.strip())


def _date(value: object) -> tuple[str | None, str | None]:
    """(ISO 8601 date, the raw value when it could not be read as a date): search/text/dates.py reads it, as it does for
    the write API."""
    text = _text(value).strip()
    if not text:
        return None, None
    parsed = parse_date(text)
    return (parsed, None) if parsed is not None else (None, text)
