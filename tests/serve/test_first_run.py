"""The first run whose gate failed still ends serving: with no champion in the (real, SQLite) registry, the near-line
run publishes the best baseline's lists under a fallback label, the online service answers 200 with every item
marked fallback and the reason, logs one warning (no error, no traceback), and serves the champion once one is
promoted."""

from __future__ import annotations

import logging
import shutil
from itertools import combinations
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.io import write_json
from leadre.registry import models
from leadre.serve.app import create_app
from leadre.serve.bundle import read_bundle
from leadre.serve.nearline import run_nearline
from leadre.serve.server import BackgroundServer
from leadre.serve.service import serve_settings, store_url
from leadre.serve.store import open_store
from tests.conftest import write_params

pytestmark = pytest.mark.slow
API_KEY = "test-admin-key"
ROUTE = "/v1/recommendations"
UNKNOWN_USER = 999_999_999


@pytest.fixture
def first_run(tmp_path, validated) -> Params:
    """A workspace with validated data, an empty registry, and no candidate store yet."""
    params = write_params(tmp_path)
    shutil.copytree(validated, params.path(params.data.validated_dir))
    return params


def evaluated(params: Params, ndcg: dict[str, float]) -> None:
    """The evaluation summary the gate and the near-line read: the baselines' primary metric."""
    primary = params.gate.primary_metric
    write_json(params.path(params.evaluate.reports_dir) / "summary.json",
               {"methods": {"candidate": {primary: 0.01}, **{name: {primary: v} for name, v in ndcg.items()}},
                "baselines": list(ndcg)})


def stored_lists(params: Params) -> dict[int, list[int]]:
    events = pd.read_parquet(params.path(params.data.validated_dir) / "events.parquet")
    store = open_store(store_url(params))
    try:
        found = {int(u): store.get(int(u)) for u in np.unique(events["user_id"])}
    finally:
        store.close()
    return {u: c.ad_ids.tolist() for u, c in found.items() if c is not None}


def engaged(params: Params) -> dict[int, set[int]]:
    events = pd.read_parquet(params.path(params.data.validated_dir) / "events.parquet")
    ads = events[events["domain"] == "ad"]
    return {int(u): set(group.tolist()) for u, group in ads.groupby("user_id")["object_id"]}


def follows_one_order(lists: dict[int, list[int]]) -> bool:
    """Whether every two lists rank the ads they share in the same order (one global ranking minus exclusions)."""
    for a, b in combinations(list(lists.values())[:60], 2):
        shared = set(a) & set(b)
        if [x for x in a if x in shared] != [x for x in b if x in shared]:
            return False
    return True


def test_nearline_without_a_champion_publishes_the_best_baselines_lists_labelled(first_run):
    params = first_run
    evaluated(params, {"popularity": 0.05, "itemknn": 0.09})
    summary = run_nearline(params)
    assert summary["model_version"] is None and summary["source"] == "fallback:itemknn" and summary["users"] > 0

    store = open_store(store_url(params))
    snapshot = store.snapshot_info()
    store.close()
    assert snapshot.model_version == "fallback:itemknn" and snapshot.users == summary["users"]
    assert read_bundle(params.path(params.serve.ads_file)).model_version is None, "no champion named in the ads file"

    lists = stored_lists(params)
    ads = pd.read_parquet(params.path(params.data.validated_dir) / "ads.parquet")
    live = set(ads.loc[ads["status"] == "active", "ad_id"].tolist())
    seen = engaged(params)
    assert all(ids and set(ids) <= live and not set(ids) & seen.get(u, set()) for u, ids in lists.items())
    assert not follows_one_order(lists), "item-kNN lists are personal, not one popularity ranking"


def test_with_no_evaluation_the_fallback_is_popularity(first_run):
    summary = run_nearline(first_run)
    assert summary["source"] == "fallback:popularity"
    lists = stored_lists(first_run)
    assert len(lists) == summary["users"] and follows_one_order(lists)


def test_the_service_serves_the_labelled_fallback_then_the_champion_once_promoted(first_run, monkeypatch, caplog,
                                                                                   tmp_path):
    params = first_run
    evaluated(params, {"popularity": 0.05, "itemknn": 0.09})
    run_nearline(params)
    lists = stored_lists(params)
    # the service drops what expired since the snapshot by the wall clock, as it would in production
    ads = pd.read_parquet(params.path(params.serve.ads_file))
    still_live = set(ads.loc[ads["expires_at"].isna() | (ads["expires_at"] > pd.Timestamp.now(tz="UTC")), "ad_id"])
    user = max(lists, key=lambda u: len(set(lists[u]) & still_live))
    expected = [a for a in lists[user] if a in still_live][:5]
    assert len(expected) == 5, "the tiny world has a user with five stored ads still live"
    monkeypatch.setenv("LEADRE_ADMIN_API_KEY", API_KEY)
    admin = {"X-API-Key": API_KEY}
    caplog.clear()  # the service's records only, from here
    caplog.set_level(logging.INFO, logger="leadre.serve")

    with BackgroundServer(create_app(serve_settings(params))) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["bundle"]["serving"] == "fallback", ready.text
        answer = client.get(f"{ROUTE}/{user}", params={"k": 5})
        assert answer.status_code == 200
        body = answer.json()
        assert (body["fallback_reason"], body["fallback_source"]) == ("no_champion", "itemknn")
        assert (body["model_version"], body["bundle_version"]) == (None, None)
        assert [i["ad_id"] for i in body["items"]] == expected
        assert {i["source"] for i in body["items"]} == {"fallback"}
        unknown = client.get(f"{ROUTE}/{UNKNOWN_USER}", params={"k": 5}).json()
        assert (unknown["fallback_reason"], unknown["fallback_source"]) == ("no_champion", "popularity")
        assert len(unknown["items"]) == 5
        for _ in range(3):  # polls while there is still no champion
            assert client.post("/admin/reload", headers=admin).status_code == 200

        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "no champion" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

        version = register_passed_version(params, tmp_path)
        models.promote(params, version)
        reload = client.post("/admin/reload", headers=admin).json()
        assert (reload["swapped"], reload["model_version"], reload["previous_version"]) == (True, version, None)
        assert client.get("/readyz").json()["bundle"]["serving"] == "champion"
        served = client.get(f"{ROUTE}/{user}", params={"k": 5}).json()
        # the champion is served at once; its own lists arrive with the next near-line run
        assert (served["bundle_version"], served["fallback_reason"]) == (version, "nearline_pending")
        assert [i["ad_id"] for i in served["items"]] == expected


def register_passed_version(params: Params, tmp_path: Path) -> str:
    """A registry version the gate passed, as the gate tags it (the online service reads only the alias)."""
    from mlflow.tracking import MlflowClient

    from leadre.tracking import configure

    configure(params)
    client = MlflowClient()
    name = params.registry.model_name
    client.create_registered_model(name)
    artifacts = tmp_path / "model"
    artifacts.mkdir()
    version = client.create_model_version(name, source=str(artifacts)).version
    client.set_model_version_tag(name, version, models.GATE_PASSED_TAG, "True")
    return str(version)
