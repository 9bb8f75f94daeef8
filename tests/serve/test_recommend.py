"""The hot-path logic without a server: live filtering, staleness and the popularity fill."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from leadre.serve.bundle import (
    BundleError,
    BundleIndex,
    FileBundleLoader,
    ServingBundle,
    write_bundle,
)
from leadre.serve.recommend import FallbackReason, recommend
from leadre.serve.store import Candidates
from tests.serve.conftest import INDUSTRIES, make_ads

NOW = time.time()
DAY = 86_400.0


def candidates(ad_ids: list[int], age_s: float = 0.0) -> Candidates:
    created = NOW - age_s
    scores = np.linspace(1.0, 0.5, len(ad_ids)).astype(np.float32)
    return Candidates(np.array(ad_ids, np.int64), scores, "m-1", datetime.fromtimestamp(created, UTC), "s", created)


def index(ads: pd.DataFrame | None = None, fallback_size: int = 100) -> BundleIndex:
    return BundleIndex(ServingBundle("v1", make_ads() if ads is None else ads), fallback_size)


def run(cands: Candidates | None, k: int, idx: BundleIndex | None = None):
    return recommend(idx or index(), cands, k, NOW, DAY, fallback_industries=1)


def test_enough_live_candidates_are_served_as_stored() -> None:
    rec = run(candidates([1005, 1001, 1002]), k=2)
    assert (rec.ad_ids, rec.nearline, rec.fallback_reason) == ([1005, 1001], 2, None)
    assert rec.scores == pytest.approx([1.0, 0.75])


def test_unknown_user_gets_global_popularity() -> None:
    rec = run(None, k=3)
    assert (rec.ad_ids, rec.nearline, rec.fallback_reason) == ([1000, 1001, 1002], 0, FallbackReason.UNKNOWN_USER)


def test_ads_no_longer_live_are_dropped_and_the_gap_filled_from_the_users_industry() -> None:
    ads = make_ads()
    ads = ads[ads["ad_id"] != 1006]  # paused since the snapshot: not in the live list
    ads["expires_at"] = pd.Timestamp(NOW + DAY, unit="s", tz="UTC")
    ads.loc[ads["ad_id"] == 1010, "expires_at"] = pd.Timestamp(NOW - 1, unit="s", tz="UTC")  # just before "now"
    # Candidates are all in industry 2 (ad_id % 4 == 2): the fill comes from that industry's most popular ads.
    rec = run(candidates([1006, 1010, 1014]), k=3, idx=index(ads))
    assert rec.ad_ids[:1] == [1014]
    assert rec.ad_ids[1:] == [1002, 1018]  # industry 2 by popularity, skipping 1006 (gone), 1010 (expired), 1014
    assert (rec.nearline, rec.fallback_reason) == (1, FallbackReason.TOO_FEW)


def test_a_stale_entry_is_ignored_but_its_industries_still_steer_the_fill() -> None:
    rec = run(candidates([1003, 1007], age_s=2 * DAY), k=2)
    assert (rec.nearline, rec.fallback_reason) == (0, FallbackReason.STALE)
    assert rec.ad_ids == [1003, 1007]  # industry 3's most popular, now as fallback items
    assert [INDUSTRIES[(a - 1000) % 4] for a in rec.ad_ids] == ["travel/hotels"] * 2


def test_fill_runs_past_the_industry_into_global_popularity_without_duplicates() -> None:
    ads = make_ads(n=8)  # two ads per industry
    rec = run(candidates([1001]), k=5, idx=index(ads))
    assert rec.ad_ids == [1001, 1005, 1000, 1002, 1003]
    assert len(set(rec.ad_ids)) == 5


def test_k_larger_than_the_live_catalogue_returns_what_there_is() -> None:
    rec = run(None, k=50, idx=index(make_ads(n=6)))
    assert sorted(rec.ad_ids) == list(range(1000, 1006))


def test_store_failure_is_reported_as_such() -> None:
    rec = recommend(index(), None, 2, NOW, DAY, 1, store_failed=True)
    assert rec.fallback_reason is FallbackReason.STORE_ERROR and len(rec.ad_ids) == 2


def test_bundle_index_drops_non_active_status_and_ranks_ties_by_ecpm() -> None:
    ads = make_ads(n=4)
    ads["status"] = ["active", "paused", "active", "expired"]
    ads["popularity"] = 1.0
    idx = index(ads)
    assert idx.ad_ids.tolist() == [1000, 1002]
    assert idx.live_positions(np.array([1001, 1002, 5]), NOW).tolist() == [-1, 1, -1]
    assert idx.ad_ids[idx.popular].tolist() == [1000, 1002]  # same popularity: higher eCPM first


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.drop(columns="popularity"), "lack column"),
    (lambda a: a.assign(ad_id=1), "duplicates"),
    (lambda a: a.assign(ecpm=np.nan), "'ecpm' must be finite"),
    (lambda a: a.assign(ad_id=a["ad_id"].astype(str)), "must be integer"),
])
def test_bad_bundles_are_rejected_with_the_column(mutate, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        index(mutate(make_ads()))


def test_file_bundle_loader_rereads_only_a_changed_file(tmp_path) -> None:
    path = tmp_path / "bundle.parquet"
    write_bundle(path, ServingBundle("v1", make_ads(), "ads-1"))
    loader = FileBundleLoader(path)
    first = loader()
    assert (first.model_version, first.ads_version, len(first.ads)) == ("v1", "ads-1", 40)
    assert loader() is first
    write_bundle(path, ServingBundle("v2", make_ads(n=5)))
    assert (loader().model_version, len(loader().ads)) == ("v2", 5)
