"""Cutting articles into passages, and passages into sentences, keeping exact character offsets.

Offsets matter more than elegance here: every passage must be quotable as a slice of its article, and every
highlight as a slice of its passage, so nothing is normalised or re-joined on the way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from search.models import PARAGRAPH_SEPARATOR, Article

# Words that end in a period without ending a sentence, in three kinds (AP style news writes all of them):
# titles always stand before a name ("Sen. Warren", "Sens. Warren and Sanders"), so they never end a sentence;
# words that usually stand before a number or a name ("Jan. 5", "No. 2", "Calif. Gov.") end one only when a word
# that starts sentences follows ("... in Pasadena, Calif. The ..."); initialisms ("U.S.", "U.N.", "p.m.", "W.")
# are caught by a pattern and treated like the second kind.
_TITLES = frozenset(
    """mr mrs ms messrs mmes dr drs prof profs sr jr st mt ft gen gens col cols lt sgt sgts capt cmdr adm gov govs
    sen sens rep reps rev hon pres supt maj cpl pvt atty attys det insp amb e.g i.e cf""".split()
)
_USUALLY_FOLLOWED = frozenset(
    """inc ltd co corp bros dept univ assn est approx no nos vs etc al fig figs vol vols ave blvd rd
    jan feb mar apr jun jul aug sep sept oct nov dec
    ala ariz ark calif colo conn del fla ga ill ind kan kans ky la md mass mich minn miss mo mont neb nev okla ore
    pa tenn tex vt va wash wis wyo""".split()
)
# Words that open sentences but rarely follow an abbreviation inside one: after "U.S." or "Calif." they mean a new
# sentence has begun ("He lives in the U.S. The court ...").
_SENTENCE_OPENERS = frozenset(
    """the a an he she it they we i you his her its their our this that these those there here but and or so yet
    in on at for if when while after before as however meanwhile also still then now what who why how where""".split()
)
_INITIALISM = re.compile(r"(?:[A-Za-z]\.){2,}$|[A-Z]\.$")
# A sentence ends at . ! ? (or an ellipsis), optionally followed by closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+)")
_OPENING = re.compile(r"\s+([\"'“‘(\[]*)(\S)")
_NEXT_WORD = re.compile(r"\s+[\"'“‘(\[]*([A-Za-z]+)")


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def sentence_spans(text: str) -> list[Span]:
    """Sentences of ``text`` as ``[start, end)`` spans with surrounding whitespace trimmed.

    A rule-based splitter: it knows the abbreviations of news prose (titles such as "Sens.", months, states,
    "Corp.") and initialisms ("U.S.", "W."), and requires the next sentence to start with an upper-case letter, a
    digit or an opening quote, which is right for news prose and errs towards longer sentences when unsure.
    """
    spans: list[Span] = []
    start = _skip_space(text, 0)
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if end <= start:
            continue
        nxt = _OPENING.match(text, end)
        if nxt is None:
            continue
        first = nxt.group(2)
        if not (first.isupper() or first.isdigit() or nxt.group(1)):
            continue
        if text[m.start()] == "." and m.end() - m.start() == 1 and _continues(text, start, m.start(), end):
            continue
        spans.append(Span(start, end))
        start = _skip_space(text, end)
    tail_end = len(text.rstrip())
    if start < tail_end:
        spans.append(Span(start, tail_end))
    return spans


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _continues(text: str, sentence_start: int, dot: int, after: int) -> bool:
    """Whether the period at ``dot`` closes an abbreviation inside a sentence rather than the sentence."""
    word_start = dot
    while word_start > sentence_start and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:dot].lstrip("\"'“‘([")
    if not word:
        return False
    key = word.casefold().rstrip(".")
    if key in _TITLES:
        return True
    if not (_INITIALISM.search(word + ".") or key in _USUALLY_FOLLOWED):
        return False
    nxt = _NEXT_WORD.match(text, after)
    return nxt is None or nxt.group(1).casefold() not in _SENTENCE_OPENERS


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs of a plain-text body: blank lines separate them; single newlines inside are kept as spaces.

    When a text has no blank lines at all but several lines, each non-empty line is a paragraph (the common shape
    of scraped news and of the bundled sample).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if re.search(r"\n\s*\n", text):
        blocks = re.split(r"\n\s*\n", text)
        paragraphs = [" ".join(line.strip() for line in b.split("\n") if line.strip()) for b in blocks]
    else:
        paragraphs = [line.strip() for line in text.split("\n")]
    return [p for p in paragraphs if p]


@dataclass(frozen=True)
class Chunk:
    """A passage before it has an id: which field it quotes and where."""

    position: int
    field: str
    start: int
    end: int
    text: str


TokenCounter = Callable[[str], int]


def _approx_tokens(text: str) -> int:
    # Word-piece tokenizers emit about 1.3 tokens per whitespace word in English news.
    return int(len(text.split()) * 1.3) + 1


@dataclass(frozen=True)
class Chunker:
    """Headline passage + one passage per paragraph; tiny paragraphs merge, long ones split on sentences."""

    max_tokens: int = 200
    min_chars: int = 60
    count_tokens: TokenCounter = _approx_tokens

    def chunk(self, article: Article) -> list[Chunk]:
        chunks: list[Chunk] = []
        title = article.title.strip()
        if title:
            start = article.title.index(title)
            chunks.append(Chunk(0, "title", start, start + len(title), title))
        body = article.body
        for start, end in self._body_spans(article):
            for s, e in self._split_long(body, start, end):
                chunks.append(Chunk(len(chunks), "body", s, e, body[s:e]))
        return chunks

    def _body_spans(self, article: Article) -> Iterator[tuple[int, int]]:
        """Paragraph spans in ``article.body``, with paragraphs shorter than ``min_chars`` merged into a neighbour."""
        spans: list[tuple[int, int]] = []
        pos = 0
        for p in article.paragraphs:
            stripped = p.strip()
            if stripped:
                s = pos + p.index(stripped)
                spans.append((s, s + len(stripped)))
            pos += len(p) + len(PARAGRAPH_SEPARATOR)
        merged: list[tuple[int, int]] = []
        pending: tuple[int, int] | None = None  # a short paragraph waiting to join the next one
        for s, e in spans:
            if pending is not None:
                s = pending[0]
                pending = None
            if e - s < self.min_chars:
                pending = (s, e)
                continue
            merged.append((s, e))
        if pending is not None:
            if merged:
                merged[-1] = (merged[-1][0], pending[1])
            else:
                merged.append(pending)
        return iter(merged)

    def _split_long(self, body: str, start: int, end: int) -> Iterator[tuple[int, int]]:
        if self.count_tokens(body[start:end]) <= self.max_tokens:
            yield start, end
            return
        cur_start: int | None = None
        cur_end = start
        for sp in sentence_spans(body[start:end]):
            s, e = start + sp.start, start + sp.end
            if cur_start is not None and self.count_tokens(body[cur_start:e]) > self.max_tokens:
                yield cur_start, cur_end
                cur_start = None
            if cur_start is None:
                cur_start = s
            cur_end = e
            if self.count_tokens(body[cur_start:cur_end]) > self.max_tokens:
                # One sentence longer than the limit: cut it on whitespace so nothing is silently truncated.
                yield from self._split_words(body, cur_start, cur_end)
                cur_start = None
        if cur_start is not None:
            yield cur_start, cur_end

    def _split_words(self, body: str, start: int, end: int) -> Iterator[tuple[int, int]]:
        words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", body[start:end])]
        i = 0
        while i < len(words):
            j = i + 1
            while j < len(words) and self.count_tokens(body[words[i][0] : words[j][1]]) <= self.max_tokens:
                j += 1
            yield words[i][0], words[j - 1][1]
            i = j
