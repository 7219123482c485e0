"""Cursor tokens and per-source page caps (pure functions); walks over a real index are in test_service.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from search.errors import InvalidInput, StaleCursor
from search.ranking.paging import KEY_FIELD, MAC_BYTES, Cursor, diversify, fingerprint, index_key, resume
from search.storage.store import Store

KEY = b"k" * 32
FP = fingerprint("q", "hybrid", None, 10, None)


def test_cursor_round_trip_and_checks() -> None:
    c = Cursor(20, 1000, 7, FP)
    assert Cursor.decode(c.encode(KEY), KEY) == c
    assert resume(c.encode(KEY), c.fingerprint, 7, KEY, page_size=10, max_depth=1000) == c
    with pytest.raises(InvalidInput, match="another query"):
        resume(c.encode(KEY), fingerprint("other", "hybrid", None, 10, None), 7, KEY, page_size=10, max_depth=1000)
    with pytest.raises(StaleCursor):
        resume(c.encode(KEY), c.fingerprint, 8, KEY, page_size=10, max_depth=1000)
    with pytest.raises(InvalidInput, match="cursor_depth"):
        resume(c.encode(KEY), c.fingerprint, 7, KEY, page_size=10, max_depth=999)
    with pytest.raises(InvalidInput, match="does not start a page"):
        resume(c.encode(KEY), c.fingerprint, 7, KEY, page_size=15, max_depth=1000)


def test_a_cursor_of_another_key_is_foreign() -> None:
    """Another index's cursor (another build, another key) is not one this server made."""
    token = Cursor(20, 1000, 7, FP).encode(b"x" * 32)
    with pytest.raises(InvalidInput, match="not one this server made"):
        Cursor.decode(token, KEY)


def _signed(payload: bytes) -> str:
    mac = hmac.new(KEY, payload, hashlib.sha256).digest()[:MAC_BYTES]
    return f"{base64.urlsafe_b64encode(payload).decode()}.{base64.urlsafe_b64encode(mac).decode()}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage!",
        "x" * 600,
        base64.urlsafe_b64encode(b'[1, 5, 2, 0, "f"]').decode(),  # the unsigned tokens of before
        "WzIsMCwxLDEsImYiXQ",
        "WzIsMCwxLDEsImYiXQ.AAAA",  # a signature that is not this key's
        _signed(b'[2, 5, 2, 0, "0123456789abcdef"]'),  # signed, yet offset past depth
        _signed(b'[2, -10, 2, 0, "0123456789abcdef"]'),
        _signed(b'[2, 0, 2, -1, "0123456789abcdef"]'),
        _signed(b'[2, 0, 2, 0, "short"]'),
        _signed(b'[2, 0, true, 0, "0123456789abcdef"]'),
        _signed(b"[2, 0, 2]"),
        _signed(b"not json"),
    ],
)
def test_foreign_and_malformed_tokens_are_input_errors(token: str) -> None:
    with pytest.raises(InvalidInput):
        Cursor.decode(token, KEY)


def test_the_key_is_the_manifests_else_one_kept_in_the_store(tmp_path: Path) -> None:
    """A build writes a key into its manifest (replicas read it there); an index built before has one made in
    its SQLite meta table by the first open that asks, the same for every process."""
    assert index_key({KEY_FIELD: KEY.hex()}, None) == KEY
    store = Store(tmp_path / "s.sqlite", create=True)
    kept = index_key({}, store)
    assert len(kept) == 32 and kept != KEY
    again = Store(tmp_path / "s.sqlite")
    assert index_key({}, again) == kept  # another process's view of the same index: the same key


def test_diversify_caps_each_page_and_keeps_everything_once() -> None:
    items = [("a", i) for i in range(6)] + [("b", 6), (None, 7), ("c", 8), ("a", 9)]
    pages = diversify(items, lambda it: it[0], page_size=4, cap=2)
    flat = [it for page in pages for it in page]
    assert sorted(flat, key=lambda it: it[1]) == items  # nothing lost, nothing repeated
    for page in pages:
        assert len(page) <= 4
        counts: dict[str, int] = {}
        for src, _ in page:
            if src is not None:
                counts[src] = counts.get(src, 0) + 1
        assert max(counts.values(), default=0) <= 2
    assert pages[0] == [("a", 0), ("a", 1), ("b", 6), (None, 7)]  # rank order, a's third waits
    assert pages[1][:2] == [("a", 2), ("a", 3)]  # the waiting come first on the next page
    with pytest.raises(InvalidInput):
        diversify(items, lambda it: it[0], page_size=0, cap=1)


def test_diversify_is_the_identity_when_nothing_hits_the_cap() -> None:
    items = [(s, i) for i, s in enumerate("abcdefgh")]
    assert [it for p in diversify(items, lambda it: it[0], 3, 1) for it in p] == items
