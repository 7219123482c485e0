"""Articles written through the API, checked whole before anything is stored.

A write request is all or nothing, so every article of a batch is validated first and the first problem is
reported with its place (``articles[3].paragraphs[0]``); nothing of a rejected request reaches the store. Fields are
the corpus fields the indexer reads (``id``, ``title``, ``paragraphs`` or ``text``, ``date``, ``source``, ``url``,
``tags``/``category``, ``extra``); unknown fields are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NoReturn

from search.errors import InvalidInput
from search.jsontypes import JSONObject, JSONValue
from search.models import Article
from search.text.dates import ACCEPTED, parse_date

MAX_ID_CHARS = 1000
MAX_PARAGRAPHS = 2000
MAX_TAGS = 100
MAX_EXTRA_DEPTH = 5
MAX_EXTRA_BYTES = 65_536
FIELDS = {"id", "title", "paragraphs", "text", "date", "source", "url", "tags", "category", "extra"}


def loads(data: bytes | str) -> JSONValue:
    """A write request's JSON body, refusing what could not be stored and served back as JSON.

    Python's parser accepts ``NaN``, ``Infinity`` and ``1e999`` (as an infinite float), which ``json.dumps`` then
    writes back as ``NaN``/``Infinity``, which no browser's ``JSON.parse`` reads; and a body of 50,000 ``[`` makes it
    raise ``RecursionError`` rather than ``ValueError``. Each is an ``InvalidInput`` here.
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidInput("the body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and ints longer than Python converts
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidInput(f"the body holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:40]} is too large for a JSON number")
    return value


@dataclass(frozen=True)
class Limits:
    max_articles: int = 1000
    max_field_chars: int = 200_000


def parse_write(payload: JSONValue, limits: Limits) -> list[Article]:
    """The articles of a write body: one article object, or ``{"articles": [...]}``."""
    if isinstance(payload, dict) and set(payload) == {"articles"}:
        items = payload["articles"]
        if not isinstance(items, list):
            raise InvalidInput("articles must be a list of article objects")
        if not items:
            raise InvalidInput("articles must not be empty")
        if len(items) > limits.max_articles:
            raise InvalidInput(f"at most {limits.max_articles} articles per request, got {len(items)}")
        out = [_article(item, f"articles[{i}]", limits) for i, item in enumerate(items)]
    elif isinstance(payload, dict):
        out = [_article(payload, "article", limits)]
    else:
        raise InvalidInput('the body must be an article object or {"articles": [...]}')
    if (i := _first_repeat([a.id for a in out])) is not None:
        raise InvalidInput(f"articles[{i}].id {out[i].id!r} appears twice in one request")
    return out


def parse_delete(payload: JSONValue, limits: Limits) -> list[str]:
    """The article ids of a batch delete body, ``{"ids": [...]}``: at most ``limits.max_articles`` distinct,
    non-empty ids (a batch is one write, all or nothing, as a batch upsert is)."""
    if not isinstance(payload, dict) or set(payload) != {"ids"}:
        raise InvalidInput('the body must be {"ids": [...]}: the ids of the articles to delete')
    ids = payload["ids"]
    if not isinstance(ids, list) or not ids:
        raise InvalidInput("ids must be a non-empty list of article ids")
    if len(ids) > limits.max_articles:
        raise InvalidInput(f"at most {limits.max_articles} ids per request, got {len(ids)}")
    out = [_text(v, f"ids[{i}]", MAX_ID_CHARS, required=True, empty_ok=False) or "" for i, v in enumerate(ids)]
    if (i := _first_repeat(out)) is not None:
        raise InvalidInput(f"ids[{i}] {out[i]!r} appears twice in one request")
    return out


def _first_repeat(ids: list[str]) -> int | None:
    """The position of the first id that an earlier one repeats, or None."""
    seen: set[str] = set()
    for i, article_id in enumerate(ids):
        if article_id in seen:
            return i
        seen.add(article_id)
    return None


def _text(value: object, where: str, limit: int, *, required: bool = False, empty_ok: bool = True) -> str | None:
    if value is None:
        if required:
            raise InvalidInput(f"{where} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidInput(f"{where} is {len(value)} characters; the limit is {limit}")
    if "\x00" in value:
        raise InvalidInput(f"{where} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where} is not valid Unicode (a lone surrogate)") from None
    if not empty_ok and not value.strip():
        raise InvalidInput(f"{where} must not be empty")
    return value


def _article(obj: JSONValue, where: str, limits: Limits) -> Article:
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where} must be an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise InvalidInput(f"{where} has unknown fields: {', '.join(unknown)}")
    cap = limits.max_field_chars
    article_id = _text(obj.get("id"), f"{where}.id", MAX_ID_CHARS, required=True, empty_ok=False)
    title = _text(obj.get("title"), f"{where}.title", cap, required=True) or ""
    if obj.get("paragraphs") is not None and obj.get("text") is not None:
        raise InvalidInput(f"{where} has both paragraphs and text; give one")
    if obj.get("paragraphs") is not None:
        raw = obj["paragraphs"]
        if not isinstance(raw, list):
            raise InvalidInput(f"{where}.paragraphs must be a list of strings")
        if len(raw) > MAX_PARAGRAPHS:
            raise InvalidInput(f"{where}.paragraphs has {len(raw)} items; the limit is {MAX_PARAGRAPHS}")
        paragraphs = [_text(p, f"{where}.paragraphs[{i}]", cap, required=True) or "" for i, p in enumerate(raw)]
    else:
        text = _text(obj.get("text"), f"{where}.text", cap) or ""
        paragraphs = [p for p in text.split("\n\n")]
    paragraphs = [" ".join(p.split()) for p in paragraphs if p.strip()]
    if not title.strip() and not paragraphs:
        raise InvalidInput(f"{where} has neither a title nor any text")
    tags = _tags(obj, where)
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidInput(f"{where}.extra must be an object")
    _check_extra(extra, f"{where}.extra")
    return Article(
        id=article_id or "",
        title=" ".join(title.split()),
        paragraphs=tuple(paragraphs),
        date=_date(obj.get("date"), f"{where}.date"),
        source=_text(obj.get("source"), f"{where}.source", 1000),
        url=_text(obj.get("url"), f"{where}.url", 8000),
        tags=tags,
        extra=extra,
    )


def _tags(obj: JSONObject, where: str) -> tuple[str, ...]:
    if "tags" in obj and "category" in obj:
        raise InvalidInput(f"{where} has both tags and category; give one")
    raw = obj.get("tags", obj.get("category"))
    if raw is None:
        return ()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or len(values) > MAX_TAGS:
        raise InvalidInput(f"{where}.tags must be a string or a list of at most {MAX_TAGS} strings")
    return tuple(
        t.strip() for i, t in enumerate(values) if (_text(t, f"{where}.tags[{i}]", 200, required=True) or "").strip()
    )


def _date(value: object, where: str) -> str | None:
    text = _text(value, where, 64)
    if text is None or not text.strip():
        return None
    parsed = parse_date(text)
    if parsed is None:  # the indexer reads the same set (search/text/dates.py): a corpus and a client agree
        raise InvalidInput(f"{where} is not a date newsdesk can read ({ACCEPTED}), got {value!r}")
    return parsed


def _check_number(value: float, where: str) -> None:
    """A number that reads back as itself: not NaN or infinite (JSON has neither), no integer beyond a double."""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise InvalidInput(f"{where} must be a finite number that fits a JSON double")


def _check_extra(value: JSONValue, where: str, depth: int = 0) -> None:
    if depth > MAX_EXTRA_DEPTH:
        raise InvalidInput(f"{where} is nested deeper than {MAX_EXTRA_DEPTH} levels")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_extra(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_extra(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, str):
        _text(value, where, 65_536)
    elif isinstance(value, float | int) and not isinstance(value, bool):
        _check_number(value, where)
    elif value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{where} holds a {type(value).__name__}")
    if depth == 0 and len(json.dumps(value, ensure_ascii=False)) > MAX_EXTRA_BYTES:
        raise InvalidInput(f"{where} is larger than {MAX_EXTRA_BYTES} characters of JSON")
