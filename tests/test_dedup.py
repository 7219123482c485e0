"""Near-duplicate detection (``search/news/dedup.py``): exact copies, light rewrites, the headline rule, grouping,
canonical ids, the incremental index against the batch run, persistence, stable hashing and LSH against a
brute-force oracle. No model and no index: ``.venv/bin/pytest tests/test_dedup.py``.

The fixture articles (``tests/fixtures/dedup/articles.json``) are written for these tests; two of them are
different stories under near-identical headlines. Synthetic bodies are seeded random words, so every similarity
level is known and every run is identical.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.news import dedup
from search.news.dedup import DedupConfig, DedupDoc, DedupIndex, DuplicateIndex, find_duplicates

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dedup" / "articles.json"
ARTICLES: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
BY_ID = {a["id"]: a for a in ARTICLES}
STORM = BY_ID["weather/storm"]


def body(article: dict[str, Any]) -> str:
    return "\n\n".join(article["paragraphs"])


def doc(article: dict[str, Any], **changes: Any) -> DedupDoc:
    d = DedupDoc(article["id"], body(article), article.get("date"), article["title"])
    return replace(d, **changes)


def words(rng: random.Random, n: int) -> list[str]:
    """``n`` words from a 20,000-word synthetic vocabulary: unrelated texts share (almost) no 5-word shingle."""
    return [f"w{rng.randrange(20_000)}" for _ in range(n)]


def light_rewrite(article: dict[str, Any]) -> str:
    """The storm story as another outlet ran it: a few words changed, the fourth paragraph cut."""
    paras = list(article["paragraphs"])
    paras[0] = paras[0].replace("Hundreds of homes", "Scores of houses").replace("overnight", "late on Friday")
    paras[2] = paras[2].replace("ninety", "eighty")
    del paras[3]
    return "\n\n".join(paras)


# --- normalisation and exact keys -------------------------------------------------------------------------------


def test_normalize_text_folds_forms_case_punctuation_and_space() -> None:
    assert (
        dedup.normalize_text("  ＡＢＣ   Straße,\n“quoted” — dash-word_under  ") == "abc strasse quoted dash word under"
    )
    # Combining marks are part of words (a \\W regex would split Devanagari here).
    assert dedup.normalize_text("नमस्ते दुनिया!") == "नमस्ते दुनिया"


def test_body_hash_ignores_case_punctuation_whitespace_and_title() -> None:
    text = body(STORM)
    variant = text.upper().replace(",", " ,").replace("\n\n", "\n \n")
    assert dedup.body_hash(variant) == dedup.body_hash(text)
    assert dedup.body_hash(text.replace("Hundreds", "Thousands")) != dedup.body_hash(text)
    a = dedup.fingerprint(text, "Storm floods towns")
    b = dedup.fingerprint(text, "Rivers burst their banks after storm")
    assert a.exact_key == b.exact_key  # the key is the body's, whatever the headline


def test_short_bodies_are_exact_copies_only_with_the_same_headline() -> None:
    docs = [
        DedupDoc("a", "Advertisement", title="Storm floods coastal towns"),
        DedupDoc("b", "Advertisement", title="Chip maker unveils faster processor"),
        DedupDoc("c", "ADVERTISEMENT.", title="Storm floods coastal towns!"),
    ]
    result = find_duplicates(docs)
    assert result.groups == [["a", "c"]]
    assert dedup.fingerprint("Advertisement").short


# --- the body rule ----------------------------------------------------------------------------------------------


def test_exact_copies_collapse_into_one_group_with_the_earliest_as_canonical() -> None:
    docs = [
        doc(STORM),
        doc(STORM, id="wire/0001", date="2024-01-19", title="Towns flooded"),
        doc(STORM, id="mirror/storm", date=None, text=body(STORM).upper()),
        *(doc(a) for a in ARTICLES if a is not STORM),
    ]
    result = find_duplicates(docs)
    assert result.groups == [["mirror/storm", "weather/storm", "wire/0001"]]
    assert {r for *_, r in result.pairs} == {"exact"}
    assert {result.canonical[i] for i in result.groups[0]} == {"wire/0001"}
    assert result.canonical["tech/chip"] == "tech/chip"  # no duplicate: its own canonical


def test_a_light_rewrite_is_detected() -> None:
    original = dedup.fingerprint(body(STORM))
    rewrite = dedup.fingerprint(light_rewrite(STORM))
    assert original.exact_key != rewrite.exact_key
    j, c = dedup.body_similarity(original, rewrite)
    assert j >= dedup.BODY_JACCARD and c > 0.8
    docs = [doc(STORM), DedupDoc("other/storm", light_rewrite(STORM), "2024-01-21", "Coastal towns under water")]
    result = find_duplicates(docs + [doc(a) for a in ARTICLES if a is not STORM])
    assert result.pairs == [("other/storm", "weather/storm", "body")]
    assert result.canonical["other/storm"] == "weather/storm"  # the earlier one


def test_a_copy_cut_short_is_found_by_containment() -> None:
    rng = random.Random(7)
    full = words(rng, 300)
    cut = full[:128]  # 43% of the original, a word changed every 25: containment 0.80, Jaccard 0.31 (exact)
    for i in range(10, 128, 25):
        cut[i] = "changed"
    exact = dedup.jaccard(dedup.shingle_hashes(full), dedup.shingle_hashes(cut))
    assert exact == pytest.approx(0.308, abs=0.001)
    fa, fb = dedup.fingerprint(" ".join(full)), dedup.fingerprint(" ".join(cut))
    j, c = dedup.body_similarity(fa, fb)  # this seed's estimate is close to the truth (others scatter by +-0.04)
    assert abs(j - exact) < 0.01
    assert j < dedup.BODY_JACCARD and c >= dedup.BODY_CONTAINMENT  # the case the containment rule exists for
    assert dedup.body_match(fa, fb)
    # Wholly contained but a fifth of the size (a quoted passage inside a longer story): not a copy.
    quote = dedup.fingerprint(" ".join(full[:60]))
    assert dedup.body_similarity(fa, quote)[1] > 0.85
    assert not dedup.body_match(fa, quote)
    # And containment alone, with the Jaccard rule off, is what links the cut copy.
    assert not dedup.body_match(fa, fb, replace(dedup.DEFAULT_CONFIG, body_containment=2.0))


def test_unrelated_articles_are_never_merged() -> None:
    result = find_duplicates([doc(a) for a in ARTICLES])
    assert result.pairs == [] and result.groups == []
    rng = random.Random(11)
    synthetic = [DedupDoc(f"s{i}", " ".join(words(rng, rng.randrange(60, 400)))) for i in range(300)]
    assert find_duplicates(synthetic).pairs == []


def test_a_story_quoting_a_paragraph_of_another_is_not_its_copy() -> None:
    quoting = dict(BY_ID["economy/rates-south"])
    quoting["paragraphs"] = [*quoting["paragraphs"], BY_ID["economy/rates-north"]["paragraphs"][2]]
    result = find_duplicates([doc(BY_ID["economy/rates-north"]), doc(quoting)])
    assert result.pairs == []


# --- the headline rule ------------------------------------------------------------------------------------------


def _vectors(*angles: float) -> list[np.ndarray]:
    """Unit vectors in a plane: the cosine of two is the cosine of their angle difference."""
    return [np.array([np.cos(a), np.sin(a), 0.0], dtype=np.float32) for a in angles]


def test_similar_headlines_alone_do_not_merge_different_stories() -> None:
    north, south = BY_ID["economy/rates-north"], BY_ID["economy/rates-south"]
    v1, v2 = _vectors(0.0, 0.05)  # cosine 0.999: "raises interest rates to curb / to fight inflation"
    result = find_duplicates([doc(north, headline_vector=v1), doc(south, headline_vector=v2)])
    assert result.pairs == []


def test_similar_headlines_with_moderately_similar_bodies_merge() -> None:
    rng = random.Random(3)
    base = words(rng, 200)
    other = base[:70] + words(rng, 130)  # shares the first 70 words only: Jaccard about 0.2, containment 0.34
    fa, fb = dedup.fingerprint(" ".join(base)), dedup.fingerprint(" ".join(other))
    j, _ = dedup.body_similarity(fa, fb)
    assert dedup.HEADLINE_BODY_JACCARD <= j < dedup.BODY_JACCARD  # the case the headline rule exists for
    assert not dedup.body_match(fa, fb)
    near, far = _vectors(0.0, 0.1)[1], _vectors(0.0, 1.0)[1]  # cosine 0.995 and 0.54
    same = _vectors(0.0)[0]
    docs = [
        DedupDoc("a", " ".join(base), "2024-03-01", headline_vector=same),
        DedupDoc("b", " ".join(other), "2024-03-02", headline_vector=near),
    ]
    assert find_duplicates(docs).pairs == [("a", "b", "headline")]
    assert find_duplicates([docs[0], replace(docs[1], headline_vector=far)]).pairs == []
    # The same pair published months apart: a recurring headline over recurring text, not one event.
    assert find_duplicates([docs[0], replace(docs[1], date="2024-06-01")]).pairs == []
    # Copies (the body rule) have no time limit: a re-publication a year later is still a copy.
    late_copy = DedupDoc("c", " ".join(base), "2025-03-01")
    assert find_duplicates([docs[0], late_copy]).pairs == [("a", "c", "exact")]


def test_headline_only_records_merge_within_days_and_short_with_long_never() -> None:
    v1, v2 = _vectors(0.0, 0.05)
    flash = DedupDoc("flash", "", "2024-01-20T08:00:00", "Storm floods coastal towns", v1)
    again = DedupDoc("again", "", "2024-01-21T09:00:00+00:00", "Coastal towns flooded by storm", v2)
    later = replace(again, id="later", date="2024-01-30")
    undated = replace(again, id="undated", date=None)
    full = doc(STORM, id="full", headline_vector=v2)
    assert find_duplicates([flash, again]).pairs == [("again", "flash", "headline")]
    assert find_duplicates([flash, later]).pairs == []  # ten days apart: another event
    assert find_duplicates([flash, undated]).pairs == [("flash", "undated", "headline")]
    assert find_duplicates([flash, full]).pairs == []  # a flash and the full story: one story, not one copy


def test_headline_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs[7] = vecs[3] + 0.01
    vecs[200] = vecs[3] * 2  # same direction, other length: normalised inside
    unit = dedup.normalize_rows(vecs)
    sims = unit @ unit.T
    expected = [(i, j) for i, j in combinations(range(300), 2) if sims[i, j] >= 0.6]
    got = dedup.headline_pairs(vecs, 0.6, block=64)
    assert [(i, j) for i, j, _ in got] == expected
    assert {(3, 7), (3, 200), (7, 200)} <= set(expected)
    assert all(abs(c - sims[i, j]) < 1e-5 for i, j, c in got)


# --- grouping and canonical ids ---------------------------------------------------------------------------------


def test_cluster_is_transitive_and_keeps_singletons() -> None:
    groups = dedup.cluster(["a", "b", "c", "d", "e"], [("a", "b"), ("c", "b"), ("d", "d")])
    assert groups == [["a", "b", "c"], ["d"], ["e"]]


def test_canonical_rule_earliest_date_then_smallest_id_undated_last() -> None:
    dates: dict[str, str | None] = {
        "z": "2024-01-02",
        "y": "2024-01-01T23:00:00-02:00",  # 2024-01-02T01:00Z: after z
        "x": "2024-01-02",  # ties z on date: x < z
        "a": None,  # undated: never before a dated article
        "b": "not a date",  # unreadable: as undated
    }
    assert dedup.canonical_ids([["z", "y", "x", "a", "b"]], dates)["a"] == "x"
    assert dedup.canonical_ids([["a", "b"]], dates)["b"] == "a"  # all undated: the smallest id
    assert dedup.canonical_ids([["q"]], {"q": None}) == {"q": "q"}


# --- the incremental index --------------------------------------------------------------------------------------


def _collection() -> list[DedupDoc]:
    """Chains (A~B~C with A and C not alike), exact copies, a headline-rule pair, a headline-only pair and noise,
    with dates, so incremental/batch equality and the canonical rule both have something to get wrong."""
    rng = random.Random(21)
    out: list[DedupDoc] = []
    for n in range(6):
        a = words(rng, 120)
        b = a[40:] + words(rng, 40)  # A~B and B~C share 80 words (Jaccard ~0.49); A and C 40 (~0.18: no link)
        c = b[40:] + words(rng, 40)
        day = f"2024-02-{10 + n:02d}"
        out += [
            DedupDoc(f"chain{n}/a", " ".join(a), day),
            DedupDoc(f"chain{n}/b", " ".join(b), f"2024-02-{n + 1:02d}"),
            DedupDoc(f"chain{n}/c", " ".join(c), None),
            DedupDoc(f"chain{n}/a-copy", " ".join(a).upper(), day),
        ]
    base = words(rng, 200)
    v1, v2, v3 = _vectors(0.0, 0.05, 1.5)
    out += [
        DedupDoc("head/a", " ".join(base), "2024-03-01", "x", v1),
        DedupDoc("head/b", " ".join(base[:90] + words(rng, 110)), "2024-03-01", "y", v2),
        DedupDoc("head/c", " ".join(words(rng, 150)), None, "z", v3),
        DedupDoc("flash/a", "", "2024-03-02", "Storm floods coastal towns", v1),
        DedupDoc("flash/b", "", "2024-03-03", "Coastal towns flooded", v2),
    ]
    out += [DedupDoc(f"noise{n}", " ".join(words(rng, 100)), None) for n in range(20)]
    return out


def _index(docs: list[DedupDoc], config: DedupConfig = dedup.DEFAULT_CONFIG) -> DedupIndex:
    index = DedupIndex(config)
    for d in docs:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    return index


def _assert_same(index: DedupIndex, docs: list[DedupDoc]) -> None:
    batch = find_duplicates(docs)
    assert index.groups() == batch.groups
    assert index.canonical_map() == batch.canonical


def test_the_collection_has_the_groups_it_was_built_for() -> None:
    batch = find_duplicates(_collection())
    assert ["chain0/a", "chain0/a-copy", "chain0/b", "chain0/c"] in batch.groups  # through b, transitively
    assert ["flash/a", "flash/b"] in batch.groups and ["head/a", "head/b"] in batch.groups
    assert len(batch.groups) == 8
    assert batch.canonical["chain0/c"] == "chain0/b"  # dated 2024-02-01, the earliest of the chain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_add_in_any_order_equals_the_batch_run(seed: int) -> None:
    docs = _collection()
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    index = _index(shuffled)
    _assert_same(index, docs)
    assert index.canonical_id("chain3/c") == "chain3/b"
    assert index.group("chain3/c") == ["chain3/b", "chain3/a", "chain3/a-copy", "chain3/c"]


def test_headlines_compared_by_date_window_group_as_the_batch_run() -> None:
    """An add compares its headline only with the stored ones dated within ``headline_days`` and the undated ones.
    Headline-only records: two days apart pair, a second more does not; an undated one pairs across any distance,
    whichever is added first; and after a removal moves the last stored vector into its row, that vector is still
    found by its own date. Each step groups as the batch run, which compares every pair."""
    edge = dedup.HEADLINE_DAYS * 86400
    start = datetime(2024, 1, 10, tzinfo=UTC)
    x1, x2, x3, x4, x5 = _vectors(0.0, 0.05, 0.1, 0.15, 0.2)  # one headline, reworded: cosines above 0.95
    y1, y2, y3 = _vectors(1.6, 1.65, 1.7)  # another one, far from the first

    def record(article_id: str, seconds: float | None, vector: np.ndarray) -> DedupDoc:
        date = None if seconds is None else (start + timedelta(seconds=seconds)).isoformat()
        return DedupDoc(article_id, "", date, f"headline {article_id}", vector)

    a, b, c = record("a", 0, x1), record("b", edge, x2), record("c", 2 * edge + 1, x3)
    undated, later, earlier = record("u", None, y1), record("f", 10 * edge, y2), record("g", -10 * edge, y3)
    last = record("d", 20 * edge, x4)
    docs = [a, b, c, undated, later, earlier, last]
    index = _index(docs)
    _assert_same(index, docs)
    assert find_duplicates(docs).groups == [["a", "b"], ["f", "g", "u"]]
    index.remove("a")  # "d", the last stored vector, moves into its row
    near_last = record("e", 20 * edge + 3600, x5)
    index.add(near_last.id, near_last.text, near_last.date, near_last.headline_vector, title=near_last.title)
    now = [b, c, undated, later, earlier, last, near_last]
    _assert_same(index, now)
    assert ["d", "e"] in find_duplicates(now).groups


def test_add_returns_the_canonical_it_joins() -> None:
    index = DedupIndex()
    a, b = _collection()[0], _collection()[1]  # chain0/a (2024-02-10) and chain0/b (2024-02-01)
    assert index.add(a.id, a.text, a.date) == "chain0/a"
    assert index.add(b.id, b.text, b.date) == "chain0/b"  # joins a's group and, being earlier, leads it
    assert index.canonical_id("chain0/a") == "chain0/b"


def test_removal_splits_a_group_at_its_bridge_and_equals_the_batch_run() -> None:
    docs = _collection()
    index = _index(docs)
    index.remove("chain0/b")  # the bridge between a and c
    remaining = [d for d in docs if d.id != "chain0/b"]
    _assert_same(index, remaining)
    assert index.group("chain0/c") == ["chain0/c"]
    assert index.canonical_id("chain0/a-copy") == "chain0/a"
    for gone in ("chain1/a", "head/b", "flash/a", "noise3", "chain2/a-copy", "chain2/a"):
        index.remove(gone)
        remaining = [d for d in remaining if d.id != gone]
        _assert_same(index, remaining)
    index.remove("no such id")  # no error
    assert len(index) == len(remaining) and "chain1/a" not in index


def test_adding_an_existing_id_replaces_the_article() -> None:
    docs = _collection()
    index = _index(docs)
    noise = docs[-1]
    index.add("chain0/a", noise.text, None)  # chain0/a now carries another body: a copy of the last noise doc
    changed = [replace(d, text=noise.text, date=None) if d.id == "chain0/a" else d for d in docs]
    _assert_same(index, changed)
    assert index.canonical_id(noise.id) == "chain0/a"


def test_a_vector_of_another_dimension_is_refused_before_anything_changes() -> None:
    index = DedupIndex()
    index.add("a", "some words here", None, [1.0, 0.0, 0.0])
    index.add("b", "other words", None, [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="dimension"):
        index.add("a", "replacement text", None, [1.0, 0.0])
    assert index.canonical_map() == {"a": "a", "b": "b"} and len(index) == 2
    index.remove("b")
    index.add("a", "replacement text", None, [1.0, 0.0])  # the only vector: a new dimension is fine
    assert index.add("c", "third", None, [0.0, 1.0]) == "c"


def test_the_index_satisfies_the_interface() -> None:
    index: DuplicateIndex = DedupIndex()
    assert index.add("x", "some words", None) == "x"


# --- persistence ------------------------------------------------------------------------------------------------


def test_serialisation_round_trip_keeps_groups_and_keeps_working() -> None:
    docs = _collection()
    index = _index(docs[:-5])
    loaded = DedupIndex.from_bytes(index.to_bytes())
    assert loaded.config == index.config
    assert loaded.groups() == index.groups() and loaded.canonical_map() == index.canonical_map()
    for d in docs[-5:]:  # both continue the same way
        assert loaded.add(d.id, d.text, d.date, d.headline_vector) == index.add(d.id, d.text, d.date, d.headline_vector)
    loaded.remove("chain0/b")
    index.remove("chain0/b")
    assert loaded.canonical_map() == index.canonical_map()
    flash_b = next(d for d in docs if d.id == "flash/b")  # re-joins flash/a only through flash/a's stored vector
    loaded.remove(flash_b.id)
    assert loaded.add(flash_b.id, flash_b.text, flash_b.date, flash_b.headline_vector, title=flash_b.title) == "flash/a"
    _assert_same(loaded, [d for d in docs if d.id != "chain0/b"])
    empty = DedupIndex.from_bytes(DedupIndex().to_bytes())
    assert len(empty) == 0 and empty.groups() == []


def test_serialisation_keeps_a_custom_config_and_refuses_another_version() -> None:
    config = DedupConfig(body_jaccard=0.5, bands=32, rows=4)
    index = DedupIndex(config)
    index.add("a", " ".join(words(random.Random(1), 50)))
    blob = index.to_bytes()
    assert DedupIndex.from_bytes(blob).config == config
    with np.load(io.BytesIO(blob)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["header"].tobytes())
    header["version"] = dedup.SIGNATURE_VERSION + 1
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    with pytest.raises(ValueError, match="rebuild"):
        DedupIndex.from_bytes(buf.getvalue())


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DedupConfig(bands=65, rows=2)
    with pytest.raises(ValueError):
        DedupConfig(shingle_words=0)


# --- stable hashing ---------------------------------------------------------------------------------------------

# Pinned: these change only with SIGNATURE_VERSION (persisted indexes depend on them).
STORM_KEY = "9275ab38af169dc311ca2252731d40c0"
STORM_SIGNATURE_HEAD = [36706959648122570, 18575893906172827, 236230597043130097, 169925402618900826]
STORM_BANDS_HEAD = [15008530310225383184, 8530469950479106037]
_PROBE = (
    "import json, sys; from search.news import dedup; t = sys.stdin.read(); f = dedup.fingerprint(t); "
    "print(json.dumps([f.exact_key, [int(x) for x in f.signature], [int(x) for x in f.bands]]))"
)


def test_hashes_are_pinned() -> None:
    text = " ".join(STORM["paragraphs"])
    f = dedup.fingerprint(text)
    assert f.exact_key == STORM_KEY
    assert f.signature is not None and f.bands is not None
    assert f.signature[:4].tolist() == STORM_SIGNATURE_HEAD
    assert f.bands[:2].tolist() == STORM_BANDS_HEAD


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_fingerprints_are_identical_in_another_process(hash_seed: str) -> None:
    text = body(STORM)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], input=text, capture_output=True, text=True, cwd=ROOT, env=env, check=True
    )
    key, sig, bands = json.loads(out.stdout)
    f = dedup.fingerprint(text)
    assert f.signature is not None and f.bands is not None
    assert key == f.exact_key and sig == f.signature.tolist() and bands == f.bands.tolist()


# --- MinHash and LSH against exact oracles ----------------------------------------------------------------------


def _similar_set(seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Texts in families: a base and variants with a share of words replaced, at exact Jaccard levels far from the
    threshold (>= 0.5 within a family, variants among themselves included; ~0 across). Returns texts and the
    intended within-family pairs."""
    rng = random.Random(seed)
    texts: list[str] = []
    families: list[list[int]] = []
    for _ in range(25):
        base = words(rng, rng.randrange(150, 300))
        members = [len(texts)]
        texts.append(" ".join(base))
        for every in (60, 40, 30):  # one word in `every` replaced: Jaccard to the base ~0.85, 0.78, 0.71
            variant = [w if i % every else f"x{rng.randrange(10**9)}" for i, w in enumerate(base)]
            members.append(len(texts))
            texts.append(" ".join(variant))
        families.append(members)
    texts += [" ".join(words(rng, 200)) for _ in range(50)]
    return texts, [p for f in families for p in combinations(f, 2)]


def test_minhash_estimates_jaccard_within_its_standard_error() -> None:
    texts, pairs = _similar_set(1)
    sets = [dedup.shingle_hashes(dedup.normalize_text(t).split()) for t in texts]
    sigs = [dedup.minhash(s) for s in sets]
    errors = []
    for i, j in [*pairs, *combinations(range(100, 110), 2)]:
        exact = dedup.jaccard(sets[i], sets[j])
        errors.append(
            (dedup.estimated_jaccard(sigs[i], sigs[j]) - exact) / max(np.sqrt(exact * (1 - exact) / 128), 0.01)
        )
    z = np.abs(np.array(errors))
    assert np.mean(z) < 1.2 and np.max(z) < 4.5  # |z| averages 0.8 for a normal estimate


def test_lsh_finds_the_pairs_of_a_brute_force_jaccard_oracle() -> None:
    texts, intended = _similar_set(2)
    config = replace(dedup.DEFAULT_CONFIG, body_containment=2.0)  # Jaccard only: the oracle's own measure
    sets = [dedup.shingle_hashes(dedup.normalize_text(t).split()) for t in texts]
    exact = {(i, j): dedup.jaccard(sets[i], sets[j]) for i, j in combinations(range(len(texts)), 2)}
    oracle = {p for p, j in exact.items() if j >= config.body_jaccard}
    assert oracle == set(intended)  # the set is built as intended...
    assert min(exact[p] for p in oracle) >= 0.5 and max(j for p, j in exact.items() if p not in oracle) < 0.05
    # ...at similarity levels where LSH misses a pair with probability < 1e-7, far below 1 / len(oracle), and
    # where the estimate (standard error 0.044) is 3.4 standard errors above the threshold at the weakest pair.
    assert 1 - dedup.lsh_candidate_probability(0.5, config.bands, config.rows) < 1e-7
    docs = [DedupDoc(f"t{i:03d}", t) for i, t in enumerate(texts)]
    found = {(int(a[1:]), int(b[1:])) for a, b, _ in find_duplicates(docs, config).pairs}
    assert found == oracle


def test_lsh_candidates_are_exactly_the_pairs_sharing_a_band() -> None:
    texts, _ = _similar_set(3)
    bands = np.stack([dedup.fingerprint(t).bands for t in texts])  # type: ignore[misc]
    brute = {(i, j) for i, j in combinations(range(len(texts)), 2) if np.any(bands[i] == bands[j])}
    assert dedup.lsh_candidates(bands) == brute
    assert len(brute) < len(texts) * 3  # sub-quadratic in practice: families, not all 12,000 pairs


def test_lsh_bucketing_against_brute_force_on_colliding_bands() -> None:
    rng = np.random.default_rng(9)
    bands = rng.integers(0, 400, size=(120, 8)).astype(np.uint64)  # frequent collisions, in every column
    brute = {(i, j) for i, j in combinations(range(120), 2) if np.any(bands[i] == bands[j])}
    only_last = {
        (i, j) for i, j in brute if bands[i, -1] == bands[j, -1] and not np.any(bands[i, :-1] == bands[j, :-1])
    }
    assert only_last  # some pairs meet in one band only: every column must be bucketed
    assert dedup.lsh_candidates(bands) == brute


def test_lsh_candidate_probability_formula() -> None:
    assert dedup.lsh_candidate_probability(0.5, 20, 5) == pytest.approx(1 - (1 - 0.5**5) ** 20)
    assert dedup.lsh_candidate_probability(0.0) == 0.0 and dedup.lsh_candidate_probability(1.0) == 1.0
