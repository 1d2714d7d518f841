"""Fast unit tests of the pure ranking code (no Redis): the functions offline evaluation calls."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from reco import neighbours
from reco.catalog import ItemIndex
from reco.filler import popular_filler
from reco.ranking import (
    RankConfig,
    UserFeatures,
    _head_length,
    _source_recency,
    popular_items,
    rank,
    similar_items,
)
from reco.rules import Filters, category_cap, diversify, diversify_head, eligible

NOW = 1_750_000_000.0
HOUR = 3600.0


def lists(pairs: dict[str, float]) -> tuple[list[str], np.ndarray]:
    return list(pairs), np.array(list(pairs.values()), dtype=np.float64)


CATALOG = {
    "X": {"category": "a", "price": "5", "in_stock": "1", "created_at": "0"},
    "Y": {"category": "a", "price": "15", "in_stock": "1", "created_at": str(NOW - 3600)},
    "Z": {"category": "b", "price": "25", "in_stock": "0", "created_at": "0"},
}


@pytest.fixture
def catalog() -> ItemIndex:
    return ItemIndex.build(CATALOG, popularity=[("Z", 9.0), ("X", 3.0), ("Y", 4.0), ("V", 1.0)])


def test_codec_round_trip_and_limit() -> None:
    raw = neighbours.encode(["a", "b", "c"], np.array([0.9, 0.5, 0.25]))
    ids, scores = neighbours.decode(raw)
    assert ids == ["a", "b", "c"] and scores.tolist() == [0.9, 0.5, 0.25]
    assert neighbours.decode(raw, limit=2)[0] == ["a", "b"]
    assert neighbours.decode(None)[0] == [] and neighbours.decode(b"")[1].size == 0
    with pytest.raises(ValueError, match="2 ids but 1 scores"):
        neighbours.encode(["a", "b"], [1.0])


def test_rank_blends_signals_exactly() -> None:
    features = UserFeatures(
        recent=["A", "B"], recent_times={"A": NOW - 60, "B": NOW - 60 - HOUR}, now=NOW,
        coview={"A": lists({"X": 4, "Y": 2}), "B": lists({"Y": 2, "Z": 1})},
        knn={"A": lists({"Z": 0.8, "X": 0.4}), "B": lists({"W": 0.6})})
    items = ItemIndex.build({}, [("X", 10), ("Y", 20), ("Z", 5), ("W", 40), ("P", 100)])
    ranking = rank(features, items, RankConfig(recency_half_life_s=HOUR), k=10, explain=True)
    assert ranking.strategy == "personalized"
    got = [(i.item_id, i.score, i.source_item) for i in ranking.items]
    assert got == [("X", pytest.approx(0.67), "A"), ("Y", pytest.approx(0.54), "A"),
                   ("Z", pytest.approx(0.51), "A"), ("W", pytest.approx(0.355), "B"),
                   ("P", pytest.approx(0.2), None)]


def test_the_source_is_credited_what_the_score_credits_it() -> None:
    """"Because you viewed" weighs each source's entries as the score does (one definition in
    reco.scoring): the removed numpy copy added up a neighbour a source listed twice although
    "max" counts it once, and divided a signal no eligible candidate has by 1 instead of
    counting it zero."""
    times, items = {"A": NOW, "B": NOW}, ItemIndex.empty()
    # A lists X twice at 0.5, B once at 0.8: under "max" X's embedding is B's (A's was 1.0).
    twice = UserFeatures(["A", "B"], times, NOW, knn={"A": (["X", "X"], np.array([0.5, 0.5])),
                                                      "B": lists({"X": 0.8})})
    got = rank(twice, items, RankConfig(), k=1, explain=True).items[0]
    assert (got.source_item, got.contributions["embedding"]) == ("B", pytest.approx(0.3))
    by_sum = rank(twice, items, RankConfig(neighbour_agg="sum"), k=1, explain=True).items[0]
    assert by_sum.source_item == "A"  # 1.0 of the 1.8
    # X's co-view sums to 0 (0.5 from A, -0.5 from B), so the score gives co-view nothing and
    # B's embedding is all of X's source evidence (the copy credited A with 0.4 * 0.5).
    cancelling = UserFeatures(["A", "B"], times, NOW,
                              coview={"A": lists({"X": 0.5}), "B": lists({"X": -0.5})},
                              knn={"B": lists({"X": 0.5})})
    got = rank(cancelling, items, RankConfig(), k=1, explain=True).items[0]
    assert (got.source_item, got.contributions["coview"]) == ("B", 0.0)


def test_seq_is_its_own_signal_beside_cf() -> None:
    """The user's SASRec list is a sixth signal, normalised apart from ALS's: an item on both
    lists adds both, whether the lists come as ids (offline) or as rows (the API's cache)."""
    from reco.ranking import RowList

    items = ItemIndex.build({}, [("X", 10), ("Y", 20), ("Z", 5), ("P", 100)])
    config = RankConfig(w_coview=0, w_embed=0, w_pop=0.2, w_recency=0, w_cf=0.5, w_seq=0.3)
    cf, seq = lists({"X": 2.0, "Y": 1.0}), lists({"Z": 0.6, "X": 0.15})
    as_rows = RowList(items.rows(seq[0]), seq[1])
    for user_seq in (seq, as_rows):
        features = UserFeatures(recent=[], recent_times={}, now=NOW, user_cf=cf,
                                user_seq=user_seq)
        ranking = rank(features, items, config, k=4, explain=True)
        got = [(i.item_id, i.score) for i in ranking.items]
        # X: cf 1, seq .25, pop .1; Z: seq 1, pop .05; Y: cf .5, pop .2; P: pop 1.
        assert got == [("X", pytest.approx(0.5 + 0.075 + 0.02)),
                       ("Z", pytest.approx(0.3 + 0.01)), ("Y", pytest.approx(0.25 + 0.04)),
                       ("P", pytest.approx(0.2))]
        assert ranking.strategy == "personalized"
        assert ranking.items[0].contributions["seq"] == pytest.approx(0.075)
        assert ranking.items[0].contributions["cf"] == pytest.approx(0.5)
    # w_seq 0: the list is ignored, as the API does not read it (N is then no candidate).
    unweighted = replace(config, w_seq=0.0)
    with_seq = UserFeatures(recent=[], recent_times={}, now=NOW, user_cf=cf,
                            user_seq=lists({"N": 0.9}))
    without = UserFeatures(recent=[], recent_times={}, now=NOW, user_cf=cf)
    assert rank(with_seq, items, unweighted, k=5) == rank(without, items, unweighted, k=5)
    # w_cf 0 likewise: ALS's candidates were ranked by the other signals, and the answer
    # called personalised what popularity alone ordered.
    no_cf = replace(config, w_cf=0.0, w_seq=0.0)
    alone = UserFeatures(recent=[], recent_times={}, now=NOW)
    assert rank(without, items, no_cf, k=5) == rank(alone, items, no_cf, k=5)
    assert rank(without, items, no_cf, k=5).strategy == "popular"
    # Nor its item-item lists, which the offline blend passes whatever the weight.
    viewed = UserFeatures(recent=["A"], recent_times={"A": NOW}, now=NOW,
                          item_cf={"A": lists({"X": 0.9})})
    unviewed = UserFeatures(recent=["A"], recent_times={"A": NOW}, now=NOW)
    assert rank(viewed, items, no_cf, k=5) == rank(unviewed, items, no_cf, k=5)


def test_rank_without_features_is_popular() -> None:
    items = ItemIndex.build({}, [("X", 1.0), ("Y", 4.0)])
    ranking = rank(UserFeatures([], {}, NOW), items, RankConfig(), k=5)
    assert ranking.strategy == "popular"
    assert [(i.item_id, i.score) for i in ranking.items] == [("Y", 0.2), ("X", 0.05)]


def test_negative_cosine_is_no_evidence() -> None:
    features = UserFeatures(["A"], {"A": NOW}, NOW, knn={"A": lists({"X": -0.5, "Y": 0.5})})
    items = rank(features, ItemIndex.empty(), RankConfig(), k=5, explain=True).items
    assert [(i.item_id, i.contributions["embedding"]) for i in items] == [("Y", 0.3), ("X", 0.0)]


def test_eligible_rules_and_unknown_items(catalog: ItemIndex) -> None:
    rows = catalog.rows(["X", "Y", "Z", "unknown", "V"])  # V: popular, no metadata
    # Once there is a catalogue, only its items may be shown (RECO_CATALOGUE_ONLY=auto).
    assert eligible(catalog, rows, Filters()).tolist() == [True, True, False, False, False]
    assert eligible(catalog, rows, Filters(category="a")).tolist() == [
        True, True, False, False, False]
    assert eligible(catalog, rows, Filters(min_price=10)).tolist() == [
        False, True, False, False, False]
    assert eligible(catalog, rows, Filters(max_price=10)).tolist() == [
        True, False, False, False, False]
    assert not eligible(catalog, rows, Filters(category="none")).any()


@pytest.mark.parametrize(("records", "mode", "shown"), [
    ({}, "auto", True),  # no catalogue at all (the MovieLens-style demo without one)
    ({"X": {}}, "auto", False), ({}, "true", False), ({"X": {}}, "false", True)])
def test_items_without_metadata_are_shown_only_without_a_catalogue(records, mode,
                                                                   shown) -> None:
    """Ids seen only in events (a retired SKU, a typo, a made-up id) are no catalogue items:
    not popular, not a cold start's, not in a personal list, whatever the route."""
    bot = "<img/src=x/onerror=alert(1)>"
    items = ItemIndex.build(records, [(bot, 100.0), ("X", 1.0)], catalogue_only=mode)
    user = UserFeatures(["A"], {"A": NOW}, NOW, coview={"A": lists({"typo": 5.0})})
    served = {i.item_id for i in rank(user, items, RankConfig(), k=5).items}
    assert (bot in served and "typo" in served) is shown
    assert (bot in served or "typo" in served) is shown
    assert any(i == bot for i, _ in popular_items(items, Filters(), 5)) is shown
    new_visitor = rank(UserFeatures([], {}, NOW), items, RankConfig(), k=5).items
    assert any(i.item_id == bot for i in new_visitor) is shown
    assert any(i.item_id == "typo" for i in similar_items(
        "A", lists({"typo": 1.0, "X": 0.5}), None, items, RankConfig(), k=5)) is shown


def test_the_first_catalogue_item_makes_unlisted_items_ineligible() -> None:
    """"auto" follows the catalogue as the API updates it in place (`with_metadata`)."""
    items = ItemIndex.build({}, [("gone", 5.0)])
    assert popular_items(items, Filters(), 5) == [("gone", 5.0)]
    items = items.with_metadata({"new": {"created_at": str(NOW)}})
    assert popular_items(items, Filters(), 5) == [("new", 0.0)]
    assert not items.in_stock[items.unknown_row]  # ids the index lacks share this row


def test_freshness_boost_only_for_items_created_within_the_window() -> None:
    # X was created long ago, Y an hour ago; "unknown" has no creation time: no boost.
    catalog = ItemIndex.build(CATALOG, catalogue_only="false")
    features = UserFeatures(recent=["A"], recent_times={"A": NOW}, now=NOW,
                            coview={"A": lists({"X": 1.0, "Y": 1.0, "unknown": 1.0})})
    config = RankConfig(w_coview=1.0, w_embed=0.0, w_pop=0.0, w_recency=0.0,
                        popular_filler_n=0, freshness_boost=0.25, freshness_days=14)
    fresh = {i.item_id: i.contributions["freshness"]
             for i in rank(features, catalog, config, k=3, explain=True).items}
    assert fresh == {"X": 0.0, "Y": 0.25, "unknown": 0.0}
    older = replace(config, freshness_days=1 / 48)  # 30 minutes: Y is an hour old
    assert all(i.contributions["freshness"] == 0.0
               for i in rank(features, catalog, older, k=3, explain=True).items)


def test_freshness_raises_a_new_item_by_a_share_of_its_score_on_the_popular_path() -> None:
    """A user with no history is ranked by popularity alone (w_pop): a boost added as a
    constant put any new item, however unpopular, above every bestseller."""
    new, old = str(NOW - 3600), "0"
    items = ItemIndex.build(
        {"best": {"created_at": old}, "second": {"created_at": old},
         "new_hit": {"created_at": new}, "new_dud": {"created_at": new}},
        popularity=[("best", 100.0), ("second", 95.0), ("new_hit", 90.0), ("new_dud", 0.01)])
    config = RankConfig(freshness_boost=0.1, freshness_days=14)
    ranking = rank(UserFeatures(recent=[], recent_times={}, now=NOW), items, config, k=4,
                   explain=True)
    assert ranking.strategy == "popular"
    assert [i.item_id for i in ranking.items] == ["best", "new_hit", "second", "new_dud"]
    w_pop = config.w_pop
    assert {i.item_id: i.contributions["freshness"] for i in ranking.items} == pytest.approx(
        {"best": 0.0, "second": 0.0, "new_hit": 0.1 * w_pop * 0.9, "new_dud": 0.1 * w_pop * 1e-4})


def test_popular_items_skip_out_of_stock_and_filter(catalog: ItemIndex) -> None:
    assert popular_items(catalog, Filters(), 3) == [("Y", 4.0), ("X", 3.0)]  # V: no metadata
    assert popular_items(catalog, Filters(category="a"), 5) == [("Y", 4.0), ("X", 3.0)]


def test_popularity_read_twice_counts_once() -> None:
    """Popularity read in chunks can list a member twice (it moved between chunks): its first
    sighting counts, for catalogue items and items the catalogue lacks alike."""
    base = ItemIndex.build({"a": {}, "b": {}, "c": {}}, catalogue_only="false")
    items = base.with_popularity(["a", "b", "c", "b", "n", "n"], [5.0, 4.0, 3.0, 3.0, 2.0, 1.0])
    assert [items.ids[r] for r in items.popular_rows.tolist()] == ["a", "b", "c", "n"]
    assert popular_items(items, Filters(), 10) == [("a", 5.0), ("b", 4.0), ("c", 3.0),
                                                   ("n", 2.0)]


def test_unknown_ids_are_ranked_with_unknown_metadata() -> None:
    features = UserFeatures(["A"], {"A": NOW}, NOW, coview={"A": lists({"n1": 2, "n2": 1})})
    items = rank(features, ItemIndex.build({"n2": {"category": "a"}}, catalogue_only="false"),
                 RankConfig(), k=5).items
    assert [(i.item_id, i.score) for i in items] == [("n1", pytest.approx(0.5)),
                                                     ("n2", pytest.approx(0.3))]


def test_diversify_caps_then_fills() -> None:
    category = np.array([0, 0, 0, 1, -1])
    order = np.arange(5)
    assert diversify(order, category, k=4, max_share=0.5).tolist() == [0, 1, 3, 4]
    assert diversify(order, category, k=5, max_share=0.5).tolist() == [0, 1, 3, 4, 2]
    assert diversify(order, category, k=2, max_share=0.5).tolist() == [0, 3]
    assert diversify(order, category, k=3, max_share=1.0).tolist() == [0, 1, 2]


def two_categories(n_a: int = 60, n_b: int = 60) -> ItemIndex:
    """n_a items of category A, every one more popular than the n_b of category B."""
    meta = {f"a{i}": {"category": "A"} for i in range(n_a)}
    meta |= {f"b{i}": {"category": "B"} for i in range(n_b)}
    pop = [(f"a{i}", 1000.0 - i) for i in range(n_a)] + [(f"b{i}", 500.0 - i)
                                                        for i in range(n_b)]
    return ItemIndex.build(meta, pop)


def test_popular_filler_keeps_the_category_cap_when_one_category_leads() -> None:
    """New users (and the fallback) rank the popular filler alone: cut to the top 50 before
    the cap, it held category A only and the list broke the cap (20 A, cap 14)."""
    items = two_categories()
    config = RankConfig(max_category_share=0.7)
    ranking = rank(UserFeatures([], {}, NOW), items, config, k=20)
    assert [i.item_id for i in ranking.items] == [f"a{i}" for i in range(14)] + [
        f"b{i}" for i in range(6)]
    # The user's seen B items are excluded: the filler still holds enough other B items.
    seen = UserFeatures([], {}, NOW, seen=[f"b{i}" for i in range(10)])
    assert [i.item_id for i in rank(seen, items, config, k=20).items] == [
        f"a{i}" for i in range(14)] + [f"b{i}" for i in range(10, 16)]
    # /popular shares the filler cache (here its n, 50): it must get the plain popular order.
    assert [i for i, _ in popular_items(items, Filters(), 50)] == [
        f"a{i}" for i in range(50)]


def test_popular_filler_still_fills_k_from_one_category() -> None:
    items = two_categories(n_b=3)
    config = RankConfig(max_category_share=0.7)
    got = [i.item_id for i in rank(UserFeatures([], {}, NOW), items, config, k=20).items]
    assert got == [f"a{i}" for i in range(14)] + ["b0", "b1", "b2"] + ["a14", "a15", "a16"]
    only_a = two_categories(n_b=0)
    assert [i.item_id for i in rank(UserFeatures([], {}, NOW), only_a, config, k=20).items] \
        == [f"a{i}" for i in range(20)]
    # A category filter lifts the cap (share 1.0), as diversify does.
    assert [i.item_id for i in rank(UserFeatures([], {}, NOW), items, config,
                                    Filters(category="A"), k=20).items] == [
        f"a{i}" for i in range(20)]


@pytest.mark.parametrize("seed", range(20))
def test_capped_filler_matches_a_plain_walk(seed: int) -> None:
    """Any prefix of the capped order is what walking the rows layer by layer gives."""
    from reco.rules import per_category

    rng = np.random.default_rng(seed)
    m, n, cap = int(rng.integers(1, 600)), int(rng.integers(1, 60)), int(rng.integers(1, 8))
    category = rng.choice([-1, 0, 1, 2, 3], size=m + 5, p=[0.05, 0.7, 0.1, 0.1, 0.05])
    rows = rng.permutation(m + 5)[:m]
    seen: dict[int, int] = {}
    layer = []
    for cat in category[rows].tolist():
        layer.append(0 if cat == -1 else seen.get(cat, 0) // cap)
        seen[cat] = seen.get(cat, 0) + 1
    expected = [rows[j] for j in sorted(range(m), key=lambda j: (layer[j], j))[:n]]
    assert per_category(rows, category, cap)[:n].tolist() == expected


@pytest.mark.parametrize("seed", range(20))
def test_head_of_the_ranking_gives_the_full_sorts_answer(seed: int) -> None:
    """`rank` applies the category cap to the head of the sorted pool: same top k as
    diversifying it all, including score ties (coarse scores) and categories that run out of
    room."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 400))
    score = rng.integers(0, 6, m) / 5.0  # many ties
    pool = np.flatnonzero(rng.random(m) < 0.8)
    category = rng.choice([-1, 0, 1, 2], size=m, p=[0.05, 0.8, 0.1, 0.05])
    full = pool[np.argsort(-score[pool], kind="stable")]
    for n in (1, 5, 40, len(pool) + 1):
        head = full[: _head_length(full, score, n)]
        assert head.tolist() == full[: len(head)].tolist()
        assert len(head) >= min(n, len(pool))
        for k, share in ((5, 0.5), (10, 0.2), (3, 1.0)):
            expected = diversify(full, category, k, share).tolist()
            got = diversify_head(head, category, k, share)
            assert got is None or got.tolist() == expected
            if len(head) == len(pool) and len(expected) == k and share >= 1.0:
                assert got is not None


def test_source_recency_borrows_newer_time_when_missing() -> None:
    weights = _source_recency(["A", "B", "C"], {"A": NOW - HOUR, "C": NOW - 2 * HOUR}, NOW, HOUR)
    assert weights.tolist() == [0.5, 0.5, 0.25]


def test_similar_items_exclude_itself_and_out_of_stock(catalog: ItemIndex) -> None:
    items = similar_items("X", lists({"Y": 3, "Z": 9, "X": 1}), lists({"Y": 0.5}), catalog,
                          RankConfig(), k=5)
    # Signals are normalised over eligible candidates only: Y is the max of both.
    assert [(i.item_id, i.score) for i in items] == [("Y", pytest.approx(0.4 + 0.3))]


def test_config_from_settings() -> None:
    from reco.settings import Settings

    config = RankConfig.from_settings(Settings(w_cf=0.7, w_seq=0.3, reco_recent_n=3,
                                               freshness_days=2))
    assert (config.w_cf, config.w_seq, config.recent_n, config.freshness_days,
            config.w_coview) == (0.7, 0.3, 3, 2, 0.4)


@pytest.mark.parametrize(("k", "share", "cap"), [
    (90, 0.7, 63), (100, 0.29, 29), (100, 0.57, 57), (20, 0.5, 10), (3, 0.1, 1), (10, 1.0, None)])
def test_category_cap_is_the_share_of_k_rounded_down(k: int, share: float, cap: int | None
                                                     ) -> None:
    """0.7 * 90 is 62.99999999999999 in floating point: the cap came out one short."""
    assert category_cap(k, share) == cap


@pytest.mark.parametrize("seed", range(12))
def test_new_arrivals_keep_the_cap_over_the_whole_catalogue(seed: int) -> None:
    """The capped new-arrivals filler, read from a widening window of the newest rows, is the
    prefix of the cap applied to every unpopular eligible item newest first, whatever the
    layout (here the newest few thousand items mostly of one category); asked again for more
    (a user with more seen items), the cached window widens."""
    from reco.catalog import newest_first
    from reco.rules import per_category

    rng = np.random.default_rng(seed)
    m = int(rng.integers(1500, 6000))
    dominant = int(rng.integers(0, m))  # the newest `dominant` items are mostly category 0
    age = rng.permutation(m).astype(float)  # 0: newest
    category = np.where(age < dominant, rng.choice([0, 1], size=m, p=[0.995, 0.005]),
                        rng.integers(0, 12, size=m))
    meta = {f"i{j}": {"category": f"c{category[j]}", "created_at": str(NOW - age[j]),
                      "in_stock": "0" if rng.random() < 0.1 else "1"} for j in range(m)}
    pop = [(f"i{j}", float(rng.integers(1, 100))) for j in rng.choice(m, size=30)]
    items = ItemIndex.build(meta, pop)
    for n, cap in ((50, 10), (300, 10), (40, 1), (2000, 7)):
        popular = items.popular_rows[eligible(items, items.popular_rows, Filters())]
        rest = newest_first(np.flatnonzero(items.in_stock[:-1] & (items.popularity[:-1] <= 0)),
                            items.created_at)
        expected = np.concatenate([per_category(popular, items.category, cap),
                                   per_category(rest, items.category, cap)])[:n]
        got = popular_filler(items, Filters(), n, cap)
        assert got.tolist() == expected.tolist(), (n, cap)
