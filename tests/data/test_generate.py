"""The generated world: deterministic, in contract, and carrying the structure the recommender must learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leadre.config import load_params
from leadre.data.contracts import CONTRACTS, TABLES
from leadre.data.generate import generate_world
from tests.conftest import REPO


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml", {"world.scale": "tiny"})


@pytest.fixture(scope="module")
def world(params):
    # "default" scale: the structure tests need enough users to measure it.
    return generate_world(params.world, params.data.snapshot_time, params.world.scales["default"])


def test_same_seed_same_world_other_seed_other_world(params):
    first = generate_world(params.world, params.data.snapshot_time)
    again = generate_world(params.world, params.data.snapshot_time)
    for name in TABLES:
        pd.testing.assert_frame_equal(first.tables()[name], again.tables()[name])
    other = generate_world(params.world.model_copy(update={"seed": params.world.seed + 1}), params.data.snapshot_time)
    assert not first.events.equals(other.events)


def test_sizes_follow_the_scale(params):
    size = params.world.size
    world = generate_world(params.world, params.data.snapshot_time)
    assert (len(world.users), len(world.ads), len(world.contents)) == (size.users, size.ads, size.contents)
    assert 0.8 * size.queries <= len(world.queries) <= size.queries  # duplicate query texts are dropped
    per_user = world.events.groupby("user_id").size()
    assert per_user.min() >= params.world.min_events_per_user
    assert per_user.mean() == pytest.approx(params.world.events_per_user_mean + params.world.min_events_per_user,
                                            rel=0.25)


def test_tables_have_contract_columns_and_types(world):
    kinds = {"int": "int64", "float": "float64", "timestamp": "datetime64[ms, UTC]"}
    for name, frame in world.tables().items():
        contract = CONTRACTS[name]
        # the contract's columns in its order; an optional one may be absent (`users.attributes` is for imports)
        assert tuple(frame.columns) == tuple(c for c in contract.column_names if c in frame.columns)
        assert {c.name for c in contract.columns if not c.optional} <= set(frame.columns), name
        for column in CONTRACTS[name].columns:
            if column.kind in kinds:
                assert str(frame[column.name].dtype) == kinds[column.kind], (name, column.name)


def test_events_ordered_within_history_and_before_snapshot(params, world):
    events = world.events
    snapshot = pd.Timestamp(params.data.snapshot_time)
    assert events["ts"].max() < snapshot
    assert events["ts"].min() >= snapshot - pd.Timedelta(days=params.world.history_days)
    assert events.equals(events.sort_values(["user_id", "ts"], kind="stable"))


def test_conversions_are_rarer_than_clicks_and_follow_a_click(world):
    events = world.events
    clicks = events[events["action"] == "click_ad"]
    conversions = events[events["action"] == "convert_ad"]
    assert 0 < len(conversions) < 0.2 * len(clicks)
    first_click = clicks.groupby(["user_id", "object_id"])["ts"].min()
    paired = conversions.join(first_click.rename("click_ts"), on=["user_id", "object_id"])
    assert paired["click_ts"].notna().all()
    assert (paired["ts"] > paired["click_ts"]).all()


def test_ecpm_is_log_normal_by_industry(world):
    log_ecpm = np.log(world.ads["ecpm"])
    by_industry = log_ecpm.groupby(world.ads["industry"].astype(str).str.split("/").str[0]).median()
    assert by_industry["finance"] > by_industry["games"] + 0.5  # price levels differ by industry
    residual = log_ecpm - log_ecpm.groupby(world.ads["industry"], observed=True).transform("median")
    assert abs(residual.skew()) < 0.3  # log-normal: symmetric on the log scale


def test_some_ads_launch_late_and_are_engaged_with(params, world):
    snapshot = pd.Timestamp(params.data.snapshot_time)
    late = world.ads[world.ads["created_at"] >= snapshot - pd.Timedelta(days=7)]
    engaged = set(world.events.loc[world.events["domain"] == "ad", "object_id"])
    assert len(late) > 0 and late["ad_id"].isin(engaged).any()  # cold-start ads exist and get clicks
    assert set(world.ads["status"]) == {"active", "paused", "expired"}


def test_ads_of_a_sub_industry_read_alike(world):
    words = world.ads["title"].str.lower().str.split().map(set)
    industry = world.ads["industry"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(words), size=(4000, 2))
    jaccard = np.array([len(words[a] & words[b]) / len(words[a] | words[b]) for a, b in pairs])
    same = industry[pairs[:, 0]] == industry[pairs[:, 1]]
    assert jaccard[same].mean() > 3 * jaccard[~same].mean()


def _last_click_industry_accuracy(world, signal_domain: str) -> tuple[float, float]:
    """How often the most frequent earlier industry (from `signal_domain`) names the user's last clicked ad's."""
    events, ads = world.events, world.ads.set_index("ad_id")
    clicks = events[events["action"] == "click_ad"]
    last = clicks.groupby("user_id").tail(1)
    target = last.set_index("user_id")["object_id"].map(ads["industry"].astype(str))
    history = events.drop(last.index)
    history = history[history["ts"] < history["user_id"].map(last.set_index("user_id")["ts"])]
    if signal_domain == "ad":
        signal = history[history["domain"] == "ad"]
        label = signal["object_id"].map(ads["industry"].astype(str))
    else:  # searches name the sub-industry of commercial queries
        signal = history[history["domain"] == "search"]
        label = signal["object_id"].map(world.queries.set_index("query_id")["topic"].astype(str))
    predicted = label.groupby(signal["user_id"]).agg(lambda s: s.value_counts().index[0])
    joined = pd.concat([target.rename("y"), predicted.rename("p")], axis=1, join="inner")
    return float((joined["y"] == joined["p"]).mean()), float(joined["y"].value_counts(normalize=True).iloc[0])


@pytest.mark.parametrize("domain", ["ad", "search"])
def test_next_ad_industry_is_predictable_from_history(world, domain):
    accuracy, majority = _last_click_industry_accuracy(world, domain)
    assert accuracy > 3 * majority, (accuracy, majority)


def test_profile_carries_intent_signal(world):
    """The most clicked industry depends on age: young and old users differ far more than under shuffled ages."""
    events, ads = world.events, world.ads.set_index("ad_id")
    clicks = events[events["action"] == "click_ad"]
    top = clicks["object_id"].map(ads["industry"].astype(str)).groupby(clicks["user_id"]).agg(
        lambda s: s.value_counts().index[0])
    age = world.users.set_index("user_id").loc[top.index, "age"].to_numpy()

    def young_old_distance(ages):
        young, old = top[ages < 25], top[ages >= 45]
        return 0.5 * (young.value_counts(normalize=True) - old.value_counts(normalize=True)).abs().sum()

    shuffled = np.random.default_rng(0).permutation(age)
    assert young_old_distance(age) > 2 * young_old_distance(shuffled)


def test_the_world_keeps_its_own_snapshot_while_an_import_is_the_source(tmp_path):
    """A user who imported a public log (source_dir = imported_dir) and then regenerates the world gets the world's
    snapshot, not the import's: the two are unrelated data sets."""
    import json

    from leadre.data.generate import run_generate
    from tests.conftest import write_params

    params = write_params(tmp_path, {"data.source_dir": "data/imported"})
    imported = params.path(params.data.imported_dir)
    imported.mkdir(parents=True)
    (imported / "manifest.json").write_text(json.dumps({"snapshot_time": "1998-04-23T00:00:00+00:00"}))
    run_generate(params)
    manifest = json.loads((params.path(params.data.generated_dir) / "manifest.json").read_text())
    assert manifest["snapshot_time"] == params.world.snapshot_time.isoformat()
    events = pd.read_parquet(params.path(params.data.generated_dir) / "events.parquet")
    assert events["ts"].max() < pd.Timestamp(params.world.snapshot_time)
