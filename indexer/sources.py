"""Reading corpora: JSON Lines (optionally gzipped), CSV, or a directory of .txt/.md files.

Field names are detected from common spellings and can be overridden with a ``FieldMap``; whatever is not mapped
is kept in the article's ``extra`` metadata rather than thrown away.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from search.chunking import split_paragraphs
from search.errors import SourceError
from search.models import Article

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
_DATE_FORMATS = ("%d-%b-%Y %H:%M:%S.%f", "%d-%b-%Y %H:%M:%S", "%Y/%m/%d", "%d/%m/%Y", "%B %d, %Y", "%b %d, %Y")


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

    def resolve(self, keys: Mapping[str, Any]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for f in fields(self):
            explicit = getattr(self, f.name)
            if explicit is not None:
                out[f.name] = explicit
            else:
                out[f.name] = next((c for c in CANDIDATES[f.name] if c in keys), None)
        return out


def read_sources(paths: list[Path], field_map: FieldMap | None = None) -> Iterator[Article]:
    """Articles from every source in order. Raises ``SourceError`` naming the file and line of any bad record."""
    fm = field_map or FieldMap()
    for path in paths:
        if not path.exists():
            raise SourceError(f"{path}: no such file or directory")
        if path.is_dir():
            yield from _read_directory(path)
            continue
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")):
            yield from _read_jsonl(path, fm)
        elif name.endswith((".csv", ".csv.gz")):
            yield from _read_csv(path, fm)
        else:
            raise SourceError(f"{path}: unknown source format (expected .jsonl, .jsonl.gz, .csv or a directory)")


def _open_text(path: Path) -> IO[str]:
    try:
        if path.name.lower().endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return path.open("r", encoding="utf-8", newline="")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file; a line that is not a
    JSON object, or an unreadable file, is a ``SourceError`` naming the file and line."""
    with _open_text(path) as fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise SourceError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                yield lineno, record
        except (UnicodeDecodeError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise SourceError(f"{path}:{lineno + 1}: unreadable ({exc})") from None


def _read_jsonl(path: Path, fm: FieldMap) -> Iterator[Article]:
    for lineno, record in read_jsonl_objects(path):
        article = to_article(record, fm, f"{path}:{lineno}")
        if article is not None:
            yield article


def _read_csv(path: Path, fm: FieldMap) -> Iterator[Article]:
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as fh:
        try:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise SourceError(f"{path}: empty CSV (no header row)")
            for row in reader:
                record = {k: v for k, v in row.items() if k is not None}
                article = to_article(record, fm, f"{path}:{reader.line_num}")
                if article is not None:
                    yield article
        except csv.Error as exc:
            raise SourceError(f"{path}: malformed CSV ({exc})") from None
        except (UnicodeDecodeError, EOFError, OSError) as exc:
            raise SourceError(f"{path}: unreadable ({exc})") from None


def _read_directory(root: Path) -> Iterator[Article]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    for f in files:
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
        rel = f.relative_to(root).with_suffix("").as_posix()
        yield Article(id=rel, title=title, paragraphs=tuple(split_paragraphs("\n".join(lines[1:]))))


def to_article(record: Mapping[str, Any], fm: FieldMap, where: str) -> Article | None:
    """One record as an Article, or None when it has neither headline nor text (empty scraped pages)."""
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


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _opt(value: Any) -> str | None:
    text = _text(value).strip()
    return text or None


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(t.strip() for t in str(value).replace(";", ",").split(",") if t.strip())


def _date(value: Any) -> tuple[str | None, str | None]:
    """(ISO 8601 date, the raw value when it could not be read as a date)."""
    text = _text(value).strip()
    if not text:
        return None, None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return date.fromisoformat(text).isoformat(), None
        except ValueError:
            return None, text
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat(), None
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).isoformat(), None
        except ValueError:
            continue
    return None, text
