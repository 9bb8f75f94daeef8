"""The platform's deployment path end to end on the tiny trained model, against a real MLflow SQLite registry:
gate → challenger, promote → champion, a failed gate leaves the champion alone, rollback; the near-line run
publishes the champion's candidates; the online service answers from them and follows `champion` without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from leadre.config import Params, load_params
from leadre.evaluate.baselines import ad_engagements
from leadre.evaluate.gate import run_gate
from leadre.evaluate.run import run_evaluate
from leadre.registry import models
from leadre.registry.promote import run_promote, run_rollback
from leadre.serve.app import create_app
from leadre.serve.nearline import run_nearline
from leadre.serve.server import BackgroundServer
from leadre.serve.service import serve_settings, store_url
from leadre.serve.store import open_store
from leadre.sids.build import load_sid_table

API_KEY = "test-admin-key"
PASS = {"gate.min_relative_lift": -1.0, "gate.guardrails": {}}  # any valid candidate passes
FAIL = {"gate.min_relative_lift": 100.0}  # no candidate passes


def with_overrides(params: Params, overrides: dict) -> Params:
    return load_params(params.root / "params.yaml", overrides)


@pytest.fixture(scope="module")
def platform(trained, tmp_path_factory) -> Params:
    """A copy of the trained workspace with its own registry, evaluated once."""
    params, _, _ = trained
    root = tmp_path_factory.mktemp("platform")
    shutil.copytree(params.root, root, dirs_exist_ok=True)
    (root / "mlruns.db").unlink(missing_ok=True)
    params = load_params(root / "params.yaml")
    run_evaluate(params)
    return params


def champion(params: Params) -> str | None:
    found = models.alias_version(params, models.CHAMPION)
    return str(found.version) if found else None


def test_promotion_rollback_and_a_failed_gate(platform):
    first = run_gate(with_overrides(platform, PASS))
    assert first["passed"] and first["challenger_version"] == "1"
    assert champion(platform) is None, "the gate alone must not move the champion"
    assert run_promote(platform)["champion"] == "1" and champion(platform) == "1"

    failed = run_gate(with_overrides(platform, FAIL))
    assert not failed["passed"] and failed["challenger_version"] == "2"
    assert any("not above the +10000.00% required" in reason for reason in failed["reasons"])
    result = run_promote(platform)
    assert not result["promoted"] and champion(platform) == "1"
    assert str(models.alias_version(platform, models.CHALLENGER).version) == "2"

    run_gate(with_overrides(platform, PASS))
    third = run_promote(platform)
    assert third["promoted"] and (third["champion"], third["previous"]) == ("3", "1")
    version = models.alias_version(platform, models.CHAMPION)
    assert version.tags[models.PREVIOUS_CHAMPION_TAG] == "1"
    assert version.tags["leadre.gate_passed"] == "True" and "mlflow.source.git.commit" in version.tags
    assert "data.prompts.md5" in version.tags and "metric.ndcg_at_10" in version.tags

    assert run_rollback(platform) == {"rolled_back_from": "3", "champion": "1"}
    assert champion(platform) == "1"


def test_the_registered_model_loads_with_one_call_and_recommends_live_ads(platform):
    import mlflow

    if champion(platform) is None:
        run_gate(with_overrides(platform, PASS))
        run_promote(platform)
    model = mlflow.pyfunc.load_model(f"models:/{platform.registry.model_name}@champion")
    prompts = pd.read_parquet(platform.path(platform.prompts.out_dir) / "sft" / "test")
    prompts = prompts[prompts["task"] == "main"].head(3)
    out = model.predict(pd.DataFrame({"prompt": [list(p) for p in prompts["prompt"]]}), params={"k": 5})
    live = set(load_sid_table(platform.path(platform.sids.out_dir)).query("live")["ad_id"])
    assert len(out) == 3 and all(0 < len(ids) <= 5 and set(ids) <= live for ids in out["ad_ids"])


def test_evaluation_scores_the_champion_beside_the_candidate(platform):
    if champion(platform) is None:
        run_gate(with_overrides(platform, PASS))
        run_promote(platform)
    summary = run_evaluate(platform)
    assert "champion" in summary["methods"] and summary["champion_version"] == champion(platform)


def test_nearline_publishes_the_champions_candidates_and_serving_follows_the_champion(platform, monkeypatch, caplog):
    if champion(platform) is None:
        run_gate(with_overrides(platform, PASS))
        run_promote(platform)
    serving_version = champion(platform)
    with caplog.at_level(logging.INFO, logger="leadre.serve.nearline"):
        summary = run_nearline(platform)
    assert summary["users"] > 0 and summary["model_version"] == serving_version
    # progress as log lines, the last one complete (no bar redrawn in a log file)
    assert f"near-line: {summary['users']}/{summary['users']} users" in caplog.text
    store = open_store(store_url(platform))
    snapshot = store.snapshot_info()
    assert snapshot.model_version == serving_version and snapshot.users == summary["users"]
    ads = pd.read_parquet(platform.path(platform.data.validated_dir) / "ads.parquet")
    live = set(ads.loc[ads["status"] == "active", "ad_id"])
    events = pd.read_parquet(platform.path(platform.data.validated_dir) / "events.parquet")
    user = int(events["user_id"].iloc[-1])
    stored = store.get(user)
    assert stored is not None and set(stored.ad_ids.tolist()) <= live
    assert np.all(np.diff(stored.scores) <= 0)
    store.close()

    # the service drops what expired since the snapshot by the wall clock, as it would in production
    served_ads = pd.read_parquet(platform.path(platform.serve.ads_file))
    still_live = set(served_ads.loc[served_ads["expires_at"] > pd.Timestamp.now(tz="UTC"), "ad_id"])
    expected = [a for a in stored.ad_ids.tolist() if a in still_live][:5]

    monkeypatch.setenv("LEADRE_ADMIN_API_KEY", API_KEY)
    with BackgroundServer(create_app(serve_settings(platform))) as server:
        answer = httpx.get(f"{server.url}/v1/recommendations/{user}", params={"k": 5}).json()
        assert answer["model_version"] == serving_version
        nearline = [item["ad_id"] for item in answer["items"] if item["source"] == "nearline"]
        assert nearline == expected and len(answer["items"]) == 5

        run_gate(with_overrides(platform, PASS))  # a new version passes the gate and is promoted
        promoted = run_promote(platform)["champion"]
        reload = httpx.post(f"{server.url}/admin/reload", headers={"X-API-Key": API_KEY})
        assert reload.status_code == 200, reload.text
        status = httpx.get(f"{server.url}/admin/status", headers={"X-API-Key": API_KEY}).json()
        assert promoted in str(status), "the service did not pick the new champion up"
        unknown = httpx.get(f"{server.url}/v1/recommendations/999999999").json()
        assert unknown["items"] and {i["source"] for i in unknown["items"]} == {"fallback"}


def test_nearline_fusion_serves_the_llm_lists_mixed_with_the_id_channel(platform):
    """`nearline.fusion: true` stores, per user, the champion's list merged with item-KNN's: live, unseen ads whose
    scores are the mixture's probabilities, and ads the LLM alone did not list."""
    if champion(platform) is None:
        run_gate(with_overrides(platform, PASS))
        run_promote(platform)
    events = pd.read_parquet(platform.path(platform.data.validated_dir) / "events.parquet")
    users = pd.unique(events["user_id"].iloc[::-1])[:30]

    def stored_lists(params: Params) -> dict[int, tuple[list[int], np.ndarray]]:
        run_nearline(params)
        store = open_store(store_url(params))
        try:
            return {int(u): (found.ad_ids.tolist(), found.scores) for u in users if (found := store.get(int(u)))}
        finally:
            store.close()

    alone = stored_lists(platform)
    fused = stored_lists(with_overrides(platform, {"nearline.fusion": True, "fusion.method": "mixture"}))
    assert fused.keys() == alone.keys() and fused
    ads = pd.read_parquet(platform.path(platform.data.validated_dir) / "ads.parquet")
    live = set(ads.loc[ads["status"] == "active", "ad_id"])
    engaged = ad_engagements(events).groupby("user_id")["ad_id"].agg(set)
    for user, (ids, scores) in fused.items():
        assert set(ids) <= live and len(set(ids)) == len(ids) and not set(ids) & engaged.get(user, set())
        assert np.all(scores > 0) and scores.sum() <= 1 + 1e-9 and np.all(np.diff(scores) <= 1e-12)
    assert any(set(fused[u][0]) - set(alone[u][0]) for u in fused), "the channel added nothing to any list"
    run_nearline(platform)  # the snapshot the other tests expect: the LLM's lists


# -- a broken or booby-trapped champion (each test registers and promotes its own version, then rolls it back) -----


def promote_bundle(platform: Params, bundle) -> str:
    """Register `bundle` through the gate (which always passes here) and make it the champion, replacing a good one
    (so `run_rollback` has a version to return to)."""
    if champion(platform) is None:
        run_gate(with_overrides(platform, PASS))
        run_promote(platform)
    params = with_overrides(platform, {**PASS, "evaluate.candidate_dir": str(bundle)})
    run_gate(params)
    return run_promote(params)["champion"]


def test_a_corrupt_champion_stops_nearline_with_one_line_and_the_store_keeps_its_snapshot(platform, tmp_path):
    corrupt = tmp_path / "corrupt-bundle"
    shutil.copytree(platform.path(platform.evaluate.candidate_dir), corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])  # a copy cut short
    store = open_store(store_url(platform))
    previous = store.write_snapshot([(1, [1003, 1001], [0.9, 0.1])], "previous-run")
    store.close()
    version = promote_bundle(platform, corrupt)
    try:
        result = subprocess.run([sys.executable, "-m", "leadre.cli", "--params", str(platform.root / "params.yaml"),
                                 "nearline"], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        run_rollback(platform)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert f"version {version}" in error and "model.safetensors" in error, error
    store = open_store(store_url(platform))
    try:
        assert store.snapshot_info().snapshot_id == previous.snapshot_id
    finally:
        store.close()


class Trap:
    """Unpickling this creates `marker`: the proof that something loaded a pickle."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_nearline_and_serving_load_weights_and_tables_never_a_pickle(platform, tmp_path, monkeypatch):
    import pickle

    import mlflow
    from mlflow.tracking import MlflowClient

    version = promote_bundle(platform, platform.path(platform.evaluate.candidate_dir))
    marker = tmp_path / "unpickled"
    client = MlflowClient()
    source = client.get_model_version(platform.registry.model_name, version).source
    model_dir = Path(client.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    # the registered version's pickle and a pickled-weights file beside the safetensors, both booby-trapped
    (model_dir / "python_model.pkl").write_bytes(pickle.dumps(Trap(marker)))
    bundle = next(model_dir.rglob("model.safetensors")).parent
    (bundle / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    try:
        summary = run_nearline(platform)
        assert summary["model_version"] == version and summary["users"] > 0
        monkeypatch.setenv("LEADRE_ADMIN_API_KEY", API_KEY)
        with BackgroundServer(create_app(serve_settings(platform))) as server:
            answer = httpx.get(f"{server.url}/v1/recommendations/1", params={"k": 5})
            assert answer.status_code == 200 and answer.json()["bundle_version"] == version
        assert not marker.exists(), "near-line or serving unpickled a registry file"
        # the trap works: the pyfunc flavour unpickles python_model.pkl (docs/serving.md: trusted registries only)
        with contextlib.suppress(Exception):
            mlflow.pyfunc.load_model(f"models:/{platform.registry.model_name}/{version}")
        assert marker.exists()
    finally:
        run_rollback(platform)
