"""Per-article metadata in memory (date, source, tags), for filters and facets at the speed of numpy.

A filtered query must know, for thousands of candidate articles, whether each passes ``from``/``to``/``source``/
``tag``; reading those columns from SQLite per query would cost more than the search. The catalog holds them as
arrays aligned on article keys (``aid``), built once when the index opens and updated by a write from the rows
it changed (``ArticleCatalog.updated``).

Dates are compared by calendar day (an article dated ``2022-06-09T15:00`` matches ``to=2022-06-09``); an article
without a date never passes a date filter. Sources and tags compare exactly, case-insensitively.
"""

from __future__ import annotations

import copy
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Generic, TypeVar

import numpy as np

from search.arrays import distinct_keys
from search.errors import InvalidInput
from search.memory import deep_size
from search.models import FacetCount
from search.storage.store import CatalogRow, ChangedRows

NO_DATE = np.iinfo(np.int32).min  # days since 1970-01-01 for articles without a date
_EPOCH = date(1970, 1, 1).toordinal()
MAX_FILTER_VALUES = 50
MAX_NOTE_VALUES = 8  # known values a note lists
SPLICE_FEW = 32  # rows a write cuts or adds up to which its lists are copied and edited in place (``_spliced``)


def parse_day(value: str, name: str) -> int:
    """Days since the epoch of an ISO date (``YYYY-MM-DD``, or a datetime whose date part is taken)."""
    text = value.strip()
    try:
        return date.fromisoformat(text[:10]).toordinal() - _EPOCH
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO date (YYYY-MM-DD), got {value!r}") from None


def day_or_none(value: str | None) -> int | None:
    """Days since the epoch of an article's ISO date, or None."""
    day = _day(value)
    return None if day == NO_DATE else day


def _day(value: str | None) -> int:
    if not value:
        return int(NO_DATE)
    try:
        return date.fromisoformat(value[:10]).toordinal() - _EPOCH
    except ValueError:
        return int(NO_DATE)


@dataclass(frozen=True)
class Filter:
    """What a result must match: a date range (inclusive days), any of ``sources``, and any of ``tags``."""

    date_from: int | None = None
    date_to: int | None = None
    sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        date_from: str | None = None,
        date_to: str | None = None,
        sources: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> Filter | None:
        """A filter from request values (None when nothing is asked), or InvalidInput naming the bad value."""
        lo = parse_day(date_from, "from") if date_from else None
        hi = parse_day(date_to, "to") if date_to else None
        if lo is not None and hi is not None and lo > hi:
            raise InvalidInput(f"from ({date_from}) is after to ({date_to})")
        for name, values in (("source", sources), ("tag", tags)):
            if len(values) > MAX_FILTER_VALUES:
                raise InvalidInput(f"at most {MAX_FILTER_VALUES} {name} values, got {len(values)}")
            if any(not v.strip() for v in values):
                raise InvalidInput(f"{name} values must not be empty")
        out = cls(lo, hi, tuple(s.strip() for s in sources), tuple(t.strip() for t in tags))
        return None if out.is_empty() else out

    def is_empty(self) -> bool:
        return self.date_from is None and self.date_to is None and not self.sources and not self.tags

    def without(self, part: str) -> Filter:
        """This filter with one part (``date``, ``source`` or ``tag``) cleared: what a facet of that part counts
        over, since picking a facet value replaces that part of the filter (the web page's facet links do)."""
        if part == "date":
            return replace(self, date_from=None, date_to=None)
        if part == "source":
            return replace(self, sources=())
        if part == "tag":
            return replace(self, tags=())
        raise ValueError(f"no filter part {part!r}")

    def key(self) -> tuple[object, ...]:
        """A hashable identity (caches, cursors): equal filters give equal keys whatever the value order."""
        return (
            self.date_from,
            self.date_to,
            tuple(sorted({s.casefold() for s in self.sources})),
            tuple(sorted({t.casefold() for t in self.tags})),
        )


class ArticleCatalog:
    """Arrays over the index's articles, sorted by ``aid``: day, source code, tag codes (CSR), and the story and
    duplicate-group labels (an article not labelled yet is alone in both, under its own id).

    Besides the row-aligned arrays and lists it keeps what a write would otherwise rebuild by a pass over every
    article: the key of each article id (``row_of``), the members of each story and duplicate group by key (keys do
    not move when rows do), and how many rows hold each source and tag (whether a write adds or retires a name).
    ``updated`` changes those by the rows a write touched, so a 10-article write costs its rows plus copies of the
    arrays and maps (C loops), not Python over the 26k articles of the whole RealTime QA corpus (0.17 s)."""

    def __init__(
        self,
        aids: np.ndarray,
        days: np.ndarray,
        sources: list[str | None],
        tags: Sequence[Sequence[str]],
        ids: list[str] | None = None,
        groups: dict[int, tuple[str, str]] | None = None,
    ) -> None:
        order = np.argsort(aids, kind="stable")
        self.aids = np.asarray(aids, dtype=np.int64)[order]
        self.days = np.asarray(days, dtype=np.int32)[order]
        raw_ids = ids if ids is not None else [str(a) for a in np.asarray(aids).tolist()]
        self.ids: list[str] = [raw_ids[i] for i in order.tolist()]
        keys = self.aids.tolist()
        self._aid_of: _Layered[str, int] = _Layered(dict(zip(self.ids, keys, strict=True)))
        get = (groups or {}).get
        labels = [get(a) for a in keys]
        self.labelled = np.asarray([g is not None for g in labels], dtype=bool)
        self.story_labels = [i if g is None else g[0] for g, i in zip(labels, self.ids, strict=True)]
        self.dup_labels = [i if g is None else g[1] for g, i in zip(labels, self.ids, strict=True)]
        duplicates = _members(self.dup_labels, keys)
        # A duplicate group's code is its smallest key: a function of the rows alone, as a fresh load gives it.
        self.dup_codes = np.asarray([duplicates[d][0] for d in self.dup_labels], dtype=np.int64)
        self._stories = _Layered(_members(self.story_labels, keys))
        self._duplicates = _Layered(duplicates)
        rows = order.tolist()
        src = [sources[i] for i in rows]
        tag = [tuple(tags[i]) for i in rows]
        self._source_count = dict(Counter(s for s in src if s))
        self._tag_count = dict(Counter(t for ts in tag for t in ts))
        self.source_names, self._source_lookup = _names(self._source_count)
        self.tag_names, self._tag_lookup = _names(self._tag_count)
        self.source_codes = np.asarray([self._source_lookup[s.casefold()] if s else -1 for s in src], dtype=np.int32)
        # The names as read (casing kept), by their place among the names: what a write counts out of the rows it
        # drops, without a list of every row's source and tags to copy.
        raw = {name: i for i, name in enumerate(self.source_names)}
        self._source_raw = np.asarray([raw[s] if s else -1 for s in src], dtype=np.int32)
        raw = {name: i for i, name in enumerate(self.tag_names)}
        self._tag_raw = np.asarray([raw[t] for ts in tag for t in ts], dtype=np.int32)
        lengths = np.asarray([len(ts) for ts in tag], dtype=np.int64)
        self.tag_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.tag_codes = np.asarray([self._tag_lookup[t.casefold()] for ts in tag for t in ts], dtype=np.int32)
        self._tag_rows = np.repeat(np.arange(len(self.aids)), lengths)

    @classmethod
    def load(cls, store: ChangedRows, extra_groups: dict[int, tuple[str, str]] | None = None) -> ArticleCatalog:
        """The catalog of ``store``; ``extra_groups`` adds labels not written (a read-only index labelled on open)."""
        return cls.of(store.catalog_rows(), {**store.groups(), **(extra_groups or {})})

    def updated(
        self,
        store: ChangedRows,
        deleted: Iterable[int],
        added: Iterable[int],
        extra_groups: dict[int, tuple[str, str]] | None = None,
    ) -> ArticleCatalog:
        """The catalog after a write that deleted the articles ``deleted`` and wrote (inserted, replaced or gave new
        metadata to) ``added``, equal to ``load(store, extra_groups)``: only the changed rows (and the labels of
        rows not labelled yet) are read from SQLite, and only they are handled one by one; the other rows are
        carried over from this catalog by array and list copies with those rows cut out and the new ones spliced
        in at their keys (a write usually appends: SQLite gives new articles the next keys). This catalog is left
        as it was: readers holding it keep a consistent view.

        A key in both (a replaced article, or SQLite reusing the key of a deleted one) is read again; so is one in
        ``deleted`` that is still stored. Kept rows keep their labels, which are never rewritten once given
        (search/news/grouping.py), unless not labelled yet (their stored labels are read) or named in
        ``extra_groups``, which labels rows as in ``load`` (labels given in memory are kept too, so it holds the
        earlier ones and more)."""
        changed = np.unique(np.asarray([*deleted, *added], dtype=np.int64))
        held = self.positions(changed)
        drop = held[held >= 0]
        rows = sorted(store.catalog_rows(changed.tolist()) if len(changed) else [], key=lambda r: r[0])
        keep = np.ones(len(self.aids), dtype=bool)
        keep[drop] = False
        waiting = self.aids[keep & ~self.labelled].tolist()  # kept rows a label may have been written for since
        labels = store.groups_of([r[0] for r in rows] + waiting) if rows or waiting else {}
        labels.update(extra_groups or {})
        new_keys = np.asarray([r[0] for r in rows], dtype=np.int64)
        kept_aids = self.aids[keep]
        at = np.searchsorted(kept_aids, new_keys)  # where each new row goes among the kept ones
        old_rows, spots = drop.tolist(), at.tolist()
        out = copy.copy(self)
        out.aids = np.insert(kept_aids, at, new_keys)
        out.days = np.insert(self.days[keep], at, np.asarray([_day(r[1]) for r in rows], dtype=np.int32))
        out.ids = _spliced(self.ids, old_rows, spots, [r[4] for r in rows])
        moved: dict[str, int | None] = {self.ids[r]: None for r in old_rows}
        moved.update((r[4], r[0]) for r in rows)
        out._aid_of = self._aid_of.changed(moved)

        # Labels: the new rows', then the kept rows' that ``labels`` names (labelled since, or in ``extra_groups``).
        given = [labels.get(r[0]) for r in rows]
        stories = [r[4] if g is None else g[0] for r, g in zip(rows, given, strict=True)]
        dups = [r[4] if g is None else g[1] for r, g in zip(rows, given, strict=True)]
        out.labelled = np.insert(self.labelled[keep], at, np.asarray([g is not None for g in given], dtype=bool))
        out.story_labels = _spliced(self.story_labels, old_rows, spots, stories)
        out.dup_labels = _spliced(self.dup_labels, old_rows, spots, dups)
        old_keys = self.aids[drop].tolist()
        story_moves: list[_Move] = [(self.story_labels[r], a, None) for r, a in zip(old_rows, old_keys, strict=True)]
        dup_moves: list[_Move] = [(self.dup_labels[r], a, None) for r, a in zip(old_rows, old_keys, strict=True)]
        story_moves += [(None, r[0], s) for r, s in zip(rows, stories, strict=True)]
        dup_moves += [(None, r[0], d) for r, d in zip(rows, dups, strict=True)]
        written = set(new_keys.tolist())
        named = np.asarray(sorted(k for k in labels if k not in written), dtype=np.int64)
        now = out.positions(named)
        for key, row in zip(named[now >= 0].tolist(), now[now >= 0].tolist(), strict=True):
            story, dup = labels[key]
            story_moves.append((out.story_labels[row], key, story))
            dup_moves.append((out.dup_labels[row], key, dup))
            out.story_labels[row], out.dup_labels[row] = story, dup
        out.labelled[now[now >= 0]] = True
        out._stories, _ = _regrouped(self._stories, story_moves)
        out._duplicates, touched = _regrouped(self._duplicates, dup_moves)
        out.dup_codes = np.insert(self.dup_codes[keep], at, np.zeros(len(rows), dtype=np.int64))
        for label in touched:
            members = out._duplicates.get(label)
            if members:
                out.dup_codes[out.positions(members)] = members[0]

        # Sources and tags: codes by name, renumbered (an array lookup) when a write adds or retires a name.
        new_sources = [r[2] for r in rows]
        gone = [self.source_names[c] for c in self._source_raw[drop].tolist() if c >= 0]
        out._source_count = _recounted(self._source_count, gone, [s for s in new_sources if s])
        kept_codes, kept_raw = self.source_codes[keep], self._source_raw[keep]
        if out._source_count.keys() != self._source_count.keys():
            out.source_names, out._source_lookup = _names(out._source_count)
            kept_codes = _renumbered(kept_codes, [out._source_lookup.get(n.casefold(), -1) for n in self.source_names])
            kept_raw = _renumbered(kept_raw, _moved(self.source_names, out.source_names))
        codes = [out._source_lookup[s.casefold()] if s else -1 for s in new_sources]
        out.source_codes = np.insert(kept_codes, at, np.asarray(codes, dtype=np.int32))
        codes = [bisect_left(out.source_names, s) if s else -1 for s in new_sources]
        out._source_raw = np.insert(kept_raw, at, np.asarray(codes, dtype=np.int32))

        new_tags = [tuple(r[3]) for r in rows]
        entries = [np.arange(self.tag_offsets[r], self.tag_offsets[r + 1]) for r in old_rows]
        dropped = np.concatenate(entries) if entries else np.zeros(0, dtype=np.int64)
        gone_tags = [self.tag_names[c] for c in self._tag_raw[dropped].tolist()]
        out._tag_count = _recounted(self._tag_count, gone_tags, [t for ts in new_tags for t in ts])
        kept_tags, kept_raw = np.delete(self.tag_codes, dropped), np.delete(self._tag_raw, dropped)
        if out._tag_count.keys() != self._tag_count.keys():
            out.tag_names, out._tag_lookup = _names(out._tag_count)
            kept_tags = _renumbered(kept_tags, [out._tag_lookup.get(n.casefold(), -1) for n in self.tag_names])
            kept_raw = _renumbered(kept_raw, _moved(self.tag_names, out.tag_names))
        kept_lengths = np.diff(self.tag_offsets)[keep]
        new_lengths = np.asarray([len(ts) for ts in new_tags], dtype=np.int64)
        kept_offsets = np.concatenate([[0], np.cumsum(kept_lengths)]).astype(np.int64)
        entry_spots = np.repeat(kept_offsets[at], new_lengths)
        codes = [out._tag_lookup[t.casefold()] for ts in new_tags for t in ts]
        out.tag_codes = np.insert(kept_tags, entry_spots, np.asarray(codes, dtype=np.int32))
        codes = [bisect_left(out.tag_names, t) for ts in new_tags for t in ts]
        out._tag_raw = np.insert(kept_raw, entry_spots, np.asarray(codes, dtype=np.int32))
        lengths = np.insert(kept_lengths, at, new_lengths)
        out.tag_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out._tag_rows = np.repeat(np.arange(len(out.aids)), lengths)
        return out

    @classmethod
    def of(cls, rows: Sequence[CatalogRow], groups: dict[int, tuple[str, str]]) -> ArticleCatalog:
        """The catalog of (key, date, source, tags, id) rows and (story, duplicate group) labels by key."""
        return cls(
            np.asarray([r[0] for r in rows], dtype=np.int64),
            np.asarray([_day(r[1]) for r in rows], dtype=np.int32),
            [r[2] for r in rows],
            [r[3] for r in rows],
            ids=[r[4] for r in rows],
            groups=groups,
        )

    def memory_bytes(self) -> int:
        """What the catalog's arrays, ids, labels and lookups hold: ``catalog`` in the memory report."""
        return deep_size(vars(self))

    def __len__(self) -> int:
        return len(self.aids)

    def positions(self, aids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Row of each article key; -1 for a key the catalog does not hold."""
        want = np.asarray(list(aids) if not isinstance(aids, np.ndarray) else aids, dtype=np.int64)
        if not len(self.aids):
            return np.full(len(want), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.aids, want), len(self.aids) - 1)
        return np.where(self.aids[at] == want, at, -1)

    def mask(self, flt: Filter) -> np.ndarray:
        """Which rows (aligned with ``self.aids``) pass ``flt``."""
        ok = np.ones(len(self.aids), dtype=bool)
        if flt.date_from is not None or flt.date_to is not None:
            ok &= self.days != NO_DATE
            if flt.date_from is not None:
                ok &= self.days >= flt.date_from
            if flt.date_to is not None:
                ok &= self.days <= flt.date_to
        if flt.sources:
            codes = [self._source_lookup[s.casefold()] for s in flt.sources if s.casefold() in self._source_lookup]
            ok &= np.isin(self.source_codes, np.asarray(codes, dtype=np.int32))
        if flt.tags:
            codes = [self._tag_lookup[t.casefold()] for t in flt.tags if t.casefold() in self._tag_lookup]
            has = np.zeros(len(self.aids), dtype=bool)
            hit = np.isin(self.tag_codes, np.asarray(codes, dtype=np.int32))
            has[self._tag_rows[hit]] = True
            ok &= has
        return ok

    def allowed(self, flt: Filter | None) -> np.ndarray | None:
        """Sorted keys of the articles passing ``flt``; None for no filter (everything passes)."""
        if flt is None or flt.is_empty():
            return None
        allowed: np.ndarray = self.aids[self.mask(flt)]
        return allowed

    def row_of(self, article_id: str) -> int:
        """Row of the article with id ``article_id``; -1 when the catalog does not hold it."""
        aid = self._aid_of.get(article_id)
        return -1 if aid is None else int(self.positions([aid])[0])

    def _first(self, rows: list[int]) -> int:
        """The row that speaks for a group: the earliest dated (undated last), then the smallest id."""
        return min(rows, key=lambda r: (self.days[r] == NO_DATE, int(self.days[r]), self.ids[r]))

    def _duplicate_group(self, row: int) -> list[int]:
        members = self._duplicates.get(self.dup_labels[row]) or []
        if len(members) == 1 and members[0] == self.aids[row]:
            return [row]  # most articles have no copy: no lookup (a results page asks ~70 times)
        rows: list[int] = self.positions(members).tolist()
        return rows

    def canonical_id(self, row: int) -> str:
        """The id of the article that speaks for ``row``'s duplicate group (its own id when it has no duplicate)."""
        return self.ids[self._first(self._duplicate_group(row))]

    def duplicate_rows(self, row: int) -> list[int]:
        """The other articles of ``row``'s duplicate group, canonical first, then by date and id."""
        members = self._duplicate_group(row)
        first = self._first(members)  # once, not once per member (a story's copies can be dozens)
        ordered = sorted(members, key=lambda r: (r != first, int(self.days[r]), self.ids[r]))
        return [r for r in ordered if r != row]

    def story_rows(self, label: str) -> list[int]:
        """The rows of story ``label``, in date order (undated last), then by id; empty for an unknown label."""
        rows: list[int] = self.positions(self._stories.get(label) or []).tolist()
        return sorted(rows, key=lambda r: (self.days[r] == NO_DATE, int(self.days[r]), self.ids[r]))

    @property
    def has_duplicates(self) -> bool:
        return len(self._duplicates) < len(self.aids)

    def source_name(self, row: int) -> str | None:
        code = int(self.source_codes[row])
        return self.source_names[code] if code >= 0 else None

    def source_of(self, aids: Sequence[int]) -> list[str | None]:
        rows = self.positions(aids)
        return [self.source_names[self.source_codes[r]] if r >= 0 and self.source_codes[r] >= 0 else None for r in rows]

    def rows_of(self, aids: Iterable[int] | np.ndarray) -> np.ndarray:
        """A boolean mask over the catalog's rows: the rows of the given article keys (keys it lacks are skipped)."""
        rows = self.positions(aids)
        out = np.zeros(len(self.aids), dtype=bool)
        out[rows[rows >= 0]] = True
        return out

    def _passing(self, matched: np.ndarray, flt: Filter | None) -> np.ndarray:
        return matched if flt is None or flt.is_empty() else matched & self.mask(flt)

    def count(self, matched: np.ndarray, flt: Filter | None = None) -> int:
        """How many results the rows ``matched`` (a mask over the rows) make under ``flt``: one per duplicate
        group, since a ranking lists one article of each group."""
        return len(distinct_keys(self.dup_codes[self._passing(matched, flt)], len(self.aids)))

    def facets(self, matched: np.ndarray, flt: Filter | None = None, size: int = 10) -> dict[str, list[FacetCount]]:
        """Counts by source, tag (category) and month of the rows ``matched`` (a mask over the rows), largest first
        (ties by name), months in calendar order.

        Each count is what ``count`` gives for the filter a click on it makes: ``flt`` with that part replaced by
        the value (a source, a category, a month's first to last day), so a facet never promises more or fewer
        results than its link shows. Hence each part is counted over the matches passing the *other* parts of
        ``flt``, and over duplicate groups, not articles."""
        out: dict[str, list[FacetCount]] = {}
        for part, name in (("source", "source"), ("tag", "category"), ("date", "month")):
            rows = np.flatnonzero(self._passing(matched, flt.without(part) if flt is not None else None))
            if part == "source":
                rows = rows[self.source_codes[rows] >= 0]
                values, names = self.source_codes[rows].astype(np.int64), self.source_names
            elif part == "tag":
                entries = np.flatnonzero(np.isin(self._tag_rows, rows))
                rows, values, names = self._tag_rows[entries], self.tag_codes[entries].astype(np.int64), self.tag_names
            else:
                rows = rows[self.days[rows] != NO_DATE]
                months = self.days[rows].astype("datetime64[D]").astype("datetime64[M]")
                values = months.astype(np.int64)
                names = []
            pairs = np.unique(np.stack([self.dup_codes[rows], values]), axis=1) if len(rows) else np.zeros((2, 0))
            found, counts = np.unique(pairs[1].astype(np.int64), return_counts=True)
            if part == "date":
                labels = [str(np.datetime64(int(m), "M")) for m in found.tolist()]
                out[name] = [FacetCount(m, int(n)) for m, n in zip(labels, counts.tolist(), strict=True)]
                continue
            ranked = sorted(
                ((names[c], int(n)) for c, n in zip(found.tolist(), counts.tolist(), strict=True)),
                key=lambda kv: (-kv[1], kv[0]),
            )
            out[name] = [FacetCount(v, n) for v, n in ranked[:size]]
        return out

    def notes(self, flt: Filter | None) -> list[str]:
        """Why ``flt`` leaves nothing to search, in words: each part that no article of the index passes (most
        often because no article has that field at all), or, when each part passes some, that no article passes
        them together. Empty when some article passes ``flt``."""
        if flt is None or flt.is_empty() or self.mask(flt).any():
            return []
        out: list[str] = []
        if flt.date_from is not None or flt.date_to is not None:
            dated = self.days[self.days != NO_DATE]
            asked = _range_words(flt.date_from, flt.date_to)
            if not len(dated):
                out.append(f"no article is dated, so the date filter ({asked}) matches none")
            elif not self.mask(Filter(date_from=flt.date_from, date_to=flt.date_to)).any():
                held = _range_words(int(dated.min()), int(dated.max()))
                out.append(f"no article is dated {asked}; the index holds articles dated {held}")
        for part, name, values, known in (
            ("source", "source", flt.sources, self.source_names),
            ("category", "category", flt.tags, self.tag_names),
        ):
            if not values:
                continue
            if not known:
                out.append(f"no article has a {name}, so the {name} filter ({', '.join(values)}) matches none")
                continue
            lookup = self._source_lookup if part == "source" else self._tag_lookup
            if not any(v.casefold() in lookup for v in values):
                shown = ", ".join(known[:MAX_NOTE_VALUES]) + (", ..." if len(known) > MAX_NOTE_VALUES else "")
                out.append(f"no article has {name} {' or '.join(values)}; the {name} values are: {shown}")
        if not out:
            out.append("no article passes all the filters together (each one alone matches some)")
        return out


def day_text(day: int) -> str:
    """The ISO date of a day number (days since 1970-01-01)."""
    return date.fromordinal(day + _EPOCH).isoformat()


def _range_words(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"from {day_text(lo)} to {day_text(hi)}"
    return f"from {day_text(lo)} on" if lo is not None else f"up to {day_text(hi)}" if hi is not None else "any date"


_T = TypeVar("_T")
_Move = tuple[str | None, int, str | None]  # (label left or None, article key, label joined or None)


def _members(labels: list[str], keys: list[int]) -> dict[str, list[int]]:
    """The keys under each label (``keys`` ascending, so each list is)."""
    out: dict[str, list[int]] = {}
    for label, key in zip(labels, keys, strict=True):
        out.setdefault(label, []).append(key)
    return out


def _regrouped(groups: _Layered[str, list[int]], moves: list[_Move]) -> tuple[_Layered[str, list[int]], set[str]]:
    """``groups`` after each key left and joined the labels ``moves`` names, and the labels whose members changed;
    only those labels' lists are new (``groups`` belongs to a catalog readers may hold)."""
    lists: dict[str, list[int]] = {}
    for left, key, joined in moves:
        for label in (left, joined):
            if label is not None and label not in lists:
                lists[label] = list(groups.get(label) or ())
        if left is not None:
            members = lists[left]
            del members[bisect_left(members, key)]
        if joined is not None:
            insort(lists[joined], key)
    changed: dict[str, list[int] | None] = {label: members or None for label, members in lists.items()}
    return groups.changed(changed), set(lists)


def _spliced(values: list[_T], drop: list[int], at: list[int], new: list[_T]) -> list[_T]:
    """A new list: ``values`` without the rows ``drop`` (ascending), and ``new[i]`` placed before what was kept row
    ``at[i]`` (ascending; the kept count for the end). A few changes: a copy and a memmove each (C loops, no
    reference counting of the kept rows); many: one pass over slices."""
    if len(drop) + len(new) > SPLICE_FEW:
        kept: list[_T] = []
        start = 0
        for row in drop:
            kept += values[start:row]
            start = row + 1
        kept += values[start:]
        out: list[_T] = []
        start = 0
        for spot, item in zip(at, new, strict=True):
            out += kept[start:spot]
            out.append(item)
            start = spot
        out += kept[start:]
        return out
    out = values.copy()
    for row in reversed(drop):
        del out[row]
    if new and at[0] >= len(out):
        out += new  # the usual write: new keys come after every kept one
    else:
        for i in reversed(range(len(new))):
            out.insert(at[i], new[i])
    return out


def _recounted(counts: dict[str, int], gone: list[str], new: list[str]) -> dict[str, int]:
    """A copy of the number of rows (entries, for tags) holding each name, less ``gone``, plus ``new``."""
    out = counts.copy()
    for name in gone:
        left = out[name] - 1
        if left:
            out[name] = left
        else:
            del out[name]
    for name in new:
        out[name] = out.get(name, 0) + 1
    return out


def _names(counts: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """The sorted names and the code of each case-folded name (the last of its spellings in that order)."""
    names = sorted(counts)
    return names, {name.casefold(): i for i, name in enumerate(names)}


def _renumbered(codes: np.ndarray, remap: list[int]) -> np.ndarray:
    """``codes`` through ``remap`` (old code -> new code); -1 (no name) stays -1."""
    table = np.asarray([*remap, -1], dtype=np.int32)
    renumbered: np.ndarray = table[codes]  # -1 indexes the appended -1
    return renumbered


def _moved(old_names: list[str], new_names: list[str]) -> list[int]:
    """Where each of ``old_names`` is among ``new_names`` (-1: retired)."""
    index = {name: i for i, name in enumerate(new_names)}
    return [index.get(name, -1) for name in old_names]


_K = TypeVar("_K")
_V = TypeVar("_V")
LAYER_LIMIT = 1024  # keys a layered map's delta holds before it is folded into a new base


class _Layered(Generic[_K, _V]):
    """A map a write derives at the cost of what it changes: a base dict, shared by every catalog derived from the
    one that made it and never changed after, and a small dict of the keys changed since (None: removed), folded
    into a new base (one C copy) once it holds ``LAYER_LIMIT`` keys. Copying the whole dict per write instead cost
    about 1.6 ms a map at 26k articles on a loaded machine (every key and value touched)."""

    __hash__ = None  # type: ignore[assignment]  # equal by content, and not immutable in type

    def __init__(self, base: dict[_K, _V], delta: dict[_K, _V | None] | None = None, size: int | None = None) -> None:
        self.base = base
        self.delta: dict[_K, _V | None] = delta or {}
        self.size = len(base) if size is None else size

    def get(self, key: _K) -> _V | None:
        return self.delta[key] if key in self.delta else self.base.get(key)

    def __len__(self) -> int:
        return self.size

    def changed(self, updates: dict[_K, _V | None]) -> _Layered[_K, _V]:
        """This map with ``updates`` applied (None removes a key); this one is left as it was."""
        size = self.size + sum((v is not None) - (self.get(k) is not None) for k, v in updates.items())
        delta = {**self.delta, **updates}
        if len(delta) <= LAYER_LIMIT:
            return _Layered(self.base, delta, size)
        base = self.base.copy()
        for key, value in delta.items():
            if value is None:
                base.pop(key, None)
            else:
                base[key] = value
        return _Layered(base, None, size)

    def as_dict(self) -> dict[_K, _V]:
        out = {k: v for k, v in self.base.items() if k not in self.delta}
        out.update((k, v) for k, v in self.delta.items() if v is not None)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Layered) and self.as_dict() == other.as_dict()
