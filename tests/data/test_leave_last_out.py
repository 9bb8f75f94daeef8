"""Leave-last-out protocol: per user, the last new ad is the test target and the one before it the valid target.

No prompt may show its target or anything after its cut-off, training may not reach a user's valid target, and the
ID baselines must see exactly the history the prompts show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.data.tables import read_tables, write_tables
from leadre.data.validate import run_validate
from leadre.evaluate.run import load_eval_set
from leadre.prompts.build import run_build_prompts
from tests.conftest import write_params
from tests.data.test_prompts import MICRO_SIDS, _sft, _ts, _write_sids, micro_world

LOO = {"evaluate.protocol": "leave_last_out"}


@pytest.fixture
def micro_loo(tmp_path) -> Params:
    params = write_params(tmp_path, {**LOO, "prompts.max_prompt_tokens": 384})
    write_tables(micro_world(), params.path(params.data.generated_dir), {"source": "test"})
    run_validate(params)
    _write_sids(params, MICRO_SIDS)
    run_build_prompts(params)
    return params


def test_micro_user_is_cut_at_their_last_and_second_last_new_ad(micro_loo):
    # user 1's new ads in time order: 1001 (Oct 3), 1003 (Oct 10, then converted: a repeat), 1002 (Oct 21),
    # 1004 (Oct 27); the Oct 28 click on 1001 repeats an old ad. User 2 engaged with one ad: never scored.
    test, valid = _sft(micro_loo, "test"), _sft(micro_loo, "valid")
    assert test["user_id"].tolist() == [1] and valid["user_id"].tolist() == [1]
    assert test["cutoff"].tolist() == [_ts("2026-10-27 19:00")] and test["target_ad_id"].tolist() == [1000000004]
    assert valid["cutoff"].tolist() == [_ts("2026-10-21 13:00")] and valid["target_ad_id"].tolist() == [1000000002]
    assert [list(t) for t in test["all_target_ad_ids"]] == [[1000000004]]
    prompt = test["prompt"].iloc[0][0]["content"]
    assert "funny pets" in prompt  # watched Oct 26: before the test cut-off, so the test prompt shows it
    assert MICRO_SIDS[1000000004] not in prompt
    assert "funny pets" not in valid["prompt"].iloc[0][0]["content"]
    train = _sft(micro_loo, "train")
    main = train[train["task"] == "main"]
    assert (main.loc[main["user_id"] == 1, "cutoff"] < _ts("2026-10-21 13:00")).all()
    for split in ("train", "valid", "test"):
        rows = _sft(micro_loo, split)
        rows = rows[rows["task"] == "main"]
        assert (rows["last_event_ts"] < rows["cutoff"]).all()


@pytest.fixture(scope="module")
def tiny_loo(tmp_path_factory, tiny_world) -> Params:
    import shutil

    params = write_params(tmp_path_factory.mktemp("loo"), {**LOO, "prompts.max_prompt_tokens": 160})
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    run_validate(params)
    ads = read_tables(params.path(params.data.validated_dir), ("ads",))["ads"]
    _write_sids(params, {a: f"<a_{i % 7}><b_{i // 7 % 7}><c_{i // 49}><d_0>" for i, a in enumerate(ads["ad_id"])})
    run_build_prompts(params)
    return params


def _new_ads(params: Params) -> pd.DataFrame:
    """Each user's first engagement with each ad, in time order, computed here independently of the code."""
    events = read_tables(params.path(params.data.validated_dir), ("events",))["events"]
    engaged = events[events["action"].isin(["click_ad", "convert_ad"])]
    return engaged.drop_duplicates(["user_id", "object_id"])[["user_id", "object_id", "ts"]]


def test_every_user_with_three_new_ads_is_cut_at_their_last_two(tiny_loo):
    new = _new_ads(tiny_loo)
    counts = new.groupby("user_id").size()
    eligible = set(counts[counts >= 3].index)
    by_user = new.groupby("user_id")
    for split, position in (("test", -1), ("valid", -2)):
        rows = _sft(tiny_loo, split)
        assert set(rows["user_id"]) == eligible and rows["user_id"].is_unique
        expected = by_user.nth(position).set_index("user_id")
        rows = rows.set_index("user_id")
        assert (rows["target_ad_id"] == expected.loc[rows.index, "object_id"]).all()
        assert (rows["cutoff"] == expected.loc[rows.index, "ts"]).all()
        assert (rows["last_event_ts"] < rows["cutoff"]).all()


def test_training_never_reaches_a_users_valid_target(tiny_loo):
    valid = _sft(tiny_loo, "valid").set_index("user_id")["cutoff"]
    train = _sft(tiny_loo, "train")
    main = train[train["task"] == "main"]
    end = main["user_id"].map(valid)
    scored = end.notna()
    assert scored.any()
    assert (main.loc[scored, "cutoff"] < end[scored]).all()
    # every train target is an engagement at or after its cut-off and before the user's valid target
    events = read_tables(tiny_loo.path(tiny_loo.data.validated_dir), ("events",))["events"]
    engaged = events[events["action"].isin(["click_ad", "convert_ad"])]
    joined = main.merge(engaged, left_on=["user_id", "target_ad_id"], right_on=["user_id", "object_id"])
    limit = joined["user_id"].map(valid).fillna(pd.Timestamp("2262-01-01", tz="UTC"))  # unscored: no end
    ok = joined[(joined["ts"] >= joined["cutoff"]) & (joined["ts"] < limit)]
    assert len(ok.groupby(["user_id", "cutoff", "target_ad_id"])) == len(main)
    # the valid and test targets are never the response of a train pair of the same user
    for split in ("valid", "test"):
        held = set(zip(*_sft(tiny_loo, split)[["user_id", "target_ad_id"]].T.to_numpy()))
        assert not held & set(zip(main["user_id"], main["target_ad_id"]))


@pytest.mark.parametrize("split", ["test", "valid"])
def test_baselines_see_exactly_the_history_the_prompts_show(tiny_loo, split):
    params = write_params(tiny_loo.root, {**LOO, "prompts.max_prompt_tokens": 160, "evaluate.split": split})
    data = load_eval_set(params)
    cutoffs = data.user_cutoffs
    prompts = _sft(params, split).set_index("user_id")["cutoff"]
    assert (cutoffs == prompts.loc[data.user_ids].to_numpy()).all()
    history = data.engagements
    events = read_tables(params.path(params.data.validated_dir), ("events",))["events"]
    engaged = events[events["action"].isin(["click_ad", "convert_ad"])]
    for i, user in enumerate(data.user_ids):
        own = engaged[(engaged["user_id"] == user) & (engaged["ts"] < cutoffs[user])]
        seen = history[history["user_id"] == user]
        assert seen["ts"].tolist() == own["ts"].tolist()  # all of it, and nothing at or after the cut-off
        assert set(data.exclude[i]) == set(own["object_id"])
        assert not set(data.relevant[i]) & set(data.exclude[i])  # the target is a new ad: it can be hit
    # a user whose target is later than another's cut-off must not leak it into the other's ranking: the fit
    # data holds, for every scored user, nothing at or after their own cut-off
    latest = history.groupby("user_id")["ts"].max()
    scored = latest.index.isin(data.user_ids)
    assert (latest[scored] < cutoffs.reindex(latest.index[scored])).all()
    assert np.isin(data.user_ids, history["user_id"]).all()
