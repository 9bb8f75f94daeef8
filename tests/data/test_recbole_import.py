"""A RecBole atomic dataset (tests/data/atomic: mini.inter, mini.item, mini.user) through import, validation,
prompts and evaluation under leave_last_out: the single-domain path a user with a public benchmark takes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from leadre.config import Params
from leadre.data.importer import run_import
from leadre.data.tables import DataError, read_manifest, read_tables
from leadre.data.validate import run_validate
from tests.conftest import FAST_TRAINING, write_params

ATOMIC = Path(__file__).parent / "atomic"
IMPORTED = {"data.source_dir": "data/imported", "evaluate.protocol": "leave_last_out"}


@pytest.fixture
def imported(tmp_path) -> Params:
    params = write_params(tmp_path, IMPORTED)
    run_import(params, ATOMIC, format="recbole")
    return params


def test_atomic_files_map_onto_the_contract(imported):
    params = imported
    tables = read_tables(params.path(params.data.imported_dir))
    manifest = read_manifest(params.path(params.data.imported_dir))
    events, ads, users = tables["events"], tables["ads"], tables["users"]
    assert len(events) == 34 and set(events["action"]) == {"click_ad"} and set(events["domain"]) == {"ad"}
    assert tables["contents"].empty and tables["queries"].empty
    # the snapshot is the data's own, recorded once: the last interaction (2019-03-11 03:00:17) + 1 s
    assert manifest["snapshot_time"] == "2019-03-11T03:00:18+00:00"
    assert params.data.snapshot_time == pd.Timestamp("2019-03-11T03:00:18+00:00")  # no later step needs it by hand
    toy = ads.set_index("ad_id").loc[101]
    assert toy["title"] == "Toy Story" and toy["industry"] == "genre/animation" and toy["status"] == "active"
    assert pd.isna(toy["expires_at"]) and toy["created_at"] == pd.Timestamp("2019-03-01 01:00:17", tz="UTC")
    assert manifest["recbole"]["synthetic_ecpm"] and (ads["ecpm"] > 0).all()
    assert set(manifest["defaulted"]["ads"]) == {"description", "advertiser", "landing_type", "bid", "created_at",
                                                 "expires_at", "status"}
    # profile: M/F mapped, the 7-year-old's age nulled and counted, zip code kept as an attribute
    user = users.set_index("user_id")
    assert user.loc[1, "gender"] == "male" and user.loc[1, "age"] == 24 and user.loc[1, "occupation"] == "technician"
    assert pd.isna(user.loc[4, "age"]) and manifest["recbole"]["ages_nulled"] == 1
    assert user.loc[1, "attributes"] == "zip_code=85711"


def test_a_rating_threshold_adds_conversions(tmp_path):
    params = write_params(tmp_path, {**IMPORTED, "data.recbole.conversion_rating": 5})
    run_import(params, ATOMIC, format="recbole")
    events = read_tables(params.path(params.data.imported_dir), ("events",))["events"]
    assert (events["action"] == "convert_ad").sum() == 10  # the ten ratings of 5


def test_a_snapshot_given_at_import_is_recorded(tmp_path):
    params = write_params(tmp_path, {**IMPORTED, "data.snapshot_time": "2019-04-01T00:00:00+00:00"})
    run_import(params, ATOMIC, format="recbole")
    later = write_params(tmp_path, IMPORTED)  # the params file no longer says it: the manifest does
    assert later.data.snapshot_time == pd.Timestamp("2019-04-01T00:00:00+00:00")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.replace("timestamp:float", "timestamp"), "mini.inter, column 'timestamp': rule 'header is "
                                                                 "field:type'"),
    (lambda text: text.replace("timestamp:float", "time:float"), "mini.inter, column 'timestamp': rule 'field "
                                                                 "'timestamp' present'"),
    (lambda text: text.replace("1551402017", "soon"), "mini.inter, column 'timestamp': rule 'values are finite "
                                                      "numbers' broken by 1 row"),
], ids=["untyped header", "no timestamp field", "timestamp not a number"])
def test_unmappable_input_is_one_error_naming_the_field(tmp_path, edit, message):
    source = tmp_path / "atomic"
    shutil.copytree(ATOMIC, source)
    inter = source / "mini.inter"
    inter.write_text(edit(inter.read_text()))
    params = write_params(tmp_path / "project", IMPORTED)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_import(params, source, format="recbole")
    assert not params.path(params.data.imported_dir).exists()


def test_imported_dataset_validates_builds_prompts_and_evaluates_leave_last_out(tmp_path):
    """The whole single-domain path, the LLM included (FAST_TRAINING: seconds on 2 cores)."""
    from leadre.evaluate.run import run_evaluate
    from leadre.prompts.build import run_build_prompts
    from leadre.sids.build import run_build_sids
    from leadre.train.dpo import run_dpo
    from leadre.train.sft import run_sft

    params = write_params(tmp_path, {**FAST_TRAINING, **IMPORTED})
    run_import(params, ATOMIC, format="recbole")
    assert run_validate(params)["status"] == "passed"  # empty contents and queries, no expiry: all valid
    run_build_sids(params)
    card = run_build_prompts(params)
    assert card["counts"]["sft/test"] == 7  # 8 users, one with only two items
    test = pd.read_parquet(params.path(params.prompts.out_dir) / "sft" / "test")
    prompts = test["prompt"].map(lambda p: p[0]["content"])
    assert prompts.str.contains("zip_code=").all() and not prompts.str.contains(r": \n").any()  # no empty facet
    run_sft(params)
    run_dpo(params)
    summary = run_evaluate(params)
    assert summary["users"] == 7
    for method in ("candidate", "popularity", "itemknn", "sasrec"):
        assert summary["methods"][method]["validity"] == 1.0
        assert 0.0 <= summary["methods"][method]["ndcg@10"] <= 1.0
    # 12 ads, each user has at least two in history: a full ranking of the rest always contains the target
    assert summary["methods"]["popularity"]["hr@10"] == 1.0
