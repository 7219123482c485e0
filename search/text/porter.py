"""The Porter stemmer exactly as SQLite FTS5's ``porter`` tokenizer applies it, so that the in-memory BM25's terms
are FTS5's terms.

FTS5 follows Martin Porter's own C implementation rather than the 1980 paper that PyStemmer's ``porter`` (Snowball)
follows: step 2 has "logi" -> "log" and "bli" -> "ble" (the paper: "abli" -> "able"), so "technology", "apology"
and "assembly" stem to "technolog", "apolog", "assembl" there and to "technologi", "apologi", "assembli" in
Snowball; on the whole RealTime QA corpus 232 of 201,224 distinct tokens stemmed apart, merging or splitting the
document frequencies of their terms. It also reads bytes: each byte of a UTF-8 character outside ASCII is a
consonant ("straße" loses its "e"), and a token of fewer than 3 or more than 64 bytes is left as it is.

The rules (tables below) and conditions are the ones ``fts5_tokenize.c`` states; ``tests/test_unicode61.py`` holds
this module to FTS5 itself on every distinct token of the bundled corpus and on words chosen for each rule.
"""

from __future__ import annotations

from collections.abc import Callable

PORTER_MIN, PORTER_MAX = 3, 64  # FTS5 passes a token of fewer or more bytes through unstemmed
_VOWELS = frozenset(b"aeiou")
_Y = ord("y")


def _vowel_at(word: bytes | bytearray, i: int, y_is_vowel: bool) -> bool:
    c = word[i]
    return c in _VOWELS or (y_is_vowel and c == _Y)


def _vc(word: bytes | bytearray, start: int, end: int, was_consonant: bool) -> int:
    """Where the first vowel-then-consonant sequence in ``word[start:end]`` ends (after its consonant), 0 if none:
    one unit of Porter's measure m. A "y" after a consonant is a vowel."""
    consonant = was_consonant
    i = start
    while i < end:
        consonant = not _vowel_at(word, i, consonant)
        if not consonant:
            break
        i += 1
    i += 1
    while i < end:
        consonant = not _vowel_at(word, i, consonant)
        if consonant:
            return i + 1
        i += 1
    return 0


def _m_gt0(word: bytes | bytearray, end: int) -> bool:
    return _vc(word, 0, end, False) != 0


def _m_gt1(word: bytes | bytearray, end: int) -> bool:
    n = _vc(word, 0, end, False)
    return n != 0 and _vc(word, n, end, True) != 0


def _m_eq1(word: bytes | bytearray, end: int) -> bool:
    n = _vc(word, 0, end, False)
    return n != 0 and _vc(word, n, end, True) == 0


def _o_star(word: bytes | bytearray, end: int) -> bool:
    """The stem ends consonant-vowel-consonant, the last not w, x or y."""
    if word[end - 1] in b"wxy":
        return False
    mask, consonant = 0, False
    for i in range(end):
        consonant = not _vowel_at(word, i, consonant)
        mask = (mask << 1) | int(consonant)
    return mask & 0b111 == 0b101


def _has_vowel(word: bytes | bytearray, end: int) -> bool:
    return any(_vowel_at(word, i, i > 0) for i in range(end))


def _m_gt1_s_or_t(word: bytes | bytearray, end: int) -> bool:
    return word[end - 1] in b"st" and _m_gt1(word, end)


Rule = tuple[bytes, Callable[[bytearray, int], bool] | None, bytes]

_STEP1B: tuple[Rule, ...] = ((b"eed", _m_gt0, b"ee"), (b"ed", _has_vowel, b""), (b"ing", _has_vowel, b""))
_STEP1B_RESULT = frozenset({b"ed", b"ing"})  # removing these leads to the step's second part
_STEP1B2: tuple[Rule, ...] = ((b"at", None, b"ate"), (b"bl", None, b"ble"), (b"iz", None, b"ize"))
_STEP2: tuple[Rule, ...] = tuple(
    (s.encode(), _m_gt0, r.encode())
    for s, r in (
        ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"), ("logi", "log"),
        ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
        ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
        ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
    )
)  # fmt: skip
_STEP3: tuple[Rule, ...] = tuple(
    (s.encode(), _m_gt0, r.encode())
    for s, r in (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""),
                 ("ness", ""))
)  # fmt: skip
_STEP4: tuple[Rule, ...] = tuple(
    (s.encode(), _m_gt1_s_or_t if s == "ion" else _m_gt1, b"")
    for s in ("al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism",
              "ate", "iti", "ous", "ive", "ize")
)  # fmt: skip


def _step(word: bytearray, rules: tuple[Rule, ...]) -> bytes | None:
    """FTS5's step: the first rule (in order) whose suffix ends the word, shorter than it, is the only one tried;
    applied if its condition holds. Returns the suffix of the rule applied, None if none was."""
    n = len(word)
    for suffix, condition, replacement in rules:
        if n > len(suffix) and word.endswith(suffix):
            stem = n - len(suffix)
            if condition is not None and not condition(word, stem):
                return None
            word[stem:] = replacement
            return suffix
    return None


def _step1a(word: bytearray) -> None:
    n = len(word)
    if word[-1:] != b"s":
        return
    if word[n - 2] == ord("e"):
        if (n > 4 and word[n - 4 : n - 2] == b"ss") or (n > 3 and word[n - 3] == ord("i")):
            del word[n - 2 :]
        else:
            del word[n - 1 :]
    elif word[n - 2] != ord("s"):
        del word[n - 1 :]


def porter(token: str) -> str:
    """FTS5's porter stem of a folded token (``unicode61.tokens``)."""
    raw = token.encode("utf-8")
    if not PORTER_MIN <= len(raw) <= PORTER_MAX:
        return token
    word = bytearray(raw)
    _step1a(word)
    if _step(word, _STEP1B) in _STEP1B_RESULT and _step(word, _STEP1B2) is None:
        c = word[-1]
        if len(word) >= 2 and not _vowel_at(word, len(word) - 1, False) and c not in b"lsz" and c == word[-2]:
            del word[-1]
        elif _m_eq1(word, len(word)) and _o_star(word, len(word)):
            word.append(ord("e"))
    if word[-1] == _Y and _has_vowel(word, len(word) - 1):
        word[-1] = ord("i")
    for rules in (_STEP2, _STEP3, _STEP4):
        _step(word, rules)
    n = len(word)
    if word[-1] == ord("e") and (_m_gt1(word, n - 1) or (_m_eq1(word, n - 1) and not _o_star(word, n - 1))):
        del word[-1]
    n = len(word)
    if n > 1 and word[-1] == ord("l") and word[-2] == ord("l") and _m_gt1(word, n - 1):
        del word[-1]
    # the suffixes removed are ASCII, so the bytes left are UTF-8 again; ``replace`` only for a byte a double
    # "consonant" rule halved inside a character, as FTS5 halves it
    return word.decode("utf-8", errors="replace")
