"""`leadre nearline`: the latency-tolerant half of serving. Champion model → every active user's top-N live ads.

For users active in the last `nearline.active_days`, it renders a fresh prompt at "now" (the data snapshot), runs
trie-constrained beam search in batches with the registry's champion, and publishes one candidate-store snapshot
(ad ids, scores, model version, time) in a single atomic swap: the online service reads the old snapshot or the new
one, never a mix. It also writes the serving ads file (live ads, industry, eCPM, recent popularity) the online
service filters and falls back with.

With no champion yet (a first retrain whose gate held its candidate back) it publishes a labelled fallback instead
of nothing: the lists of the best ID baseline of the last evaluation (`fallback_baseline`), fitted on every
engagement before "now", under the label `fallback:<baseline>` where the model version would be. So a first run
always ends with something to serve, and every answer says it is the fallback.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from leadre.config import Params
from leadre.runtime import set_cpu_threads
from leadre.serve.store import fallback_label
from leadre.sharding import Shard
from leadre.train.model import ModelError

log = logging.getLogger(__name__)


def serving_ads(params: Params, ads: pd.DataFrame, events: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """Live ads with their popularity: ad engagements in the last `serve.popularity_days`, recent ones first."""
    since = now - pd.Timedelta(days=params.serve.popularity_days)
    recent = events[(events["domain"] == "ad") & (events["ts"] >= since)]
    popularity = recent.groupby("object_id").size()
    live = ads[(ads["status"] == "active") & (ads["expires_at"].isna() | (ads["expires_at"] > now))]  # no expiry: live
    return pd.DataFrame({"ad_id": live["ad_id"].to_numpy(np.int64), "industry": live["industry"].astype(str).to_numpy(),
                         "ecpm": live["ecpm"].to_numpy(np.float64),
                         "popularity": popularity.reindex(live["ad_id"], fill_value=0).to_numpy(np.float64),
                         "expires_at": live["expires_at"].to_numpy()})


FALLBACK_DEFAULT = "popularity"  # the fallback when no evaluation ranked the baselines: needs nothing but counts


def fallback_baseline(params: Params) -> str:
    """The baseline whose lists are served while there is no champion: the best on the gate's primary metric among
    the baselines the last evaluation ran (its summary's `baselines`, the set the gate compares with when there is no
    champion) and params still configure; popularity when there is no such evaluation."""
    from leadre.evaluate import SUMMARY
    from leadre.evaluate.gate import best_baseline
    from leadre.io import read_json

    path = params.path(params.evaluate.reports_dir) / SUMMARY
    if not path.exists():
        return FALLBACK_DEFAULT
    summary = read_json(path)
    configured = [name for name in summary.get("baselines", ()) if name in params.evaluate.baselines]
    best = best_baseline(summary.get("methods", {}), params.gate.primary_metric, configured)
    return best if best is not None else FALLBACK_DEFAULT


def _fitted_baseline(params: Params, name: str, events: pd.DataFrame, now: pd.Timestamp):
    """An ID baseline fitted on ad engagements before now, with its `evaluate.baselines` settings (its defaults when
    params do not list it: popularity is the fallback even where the evaluation skips it)."""
    from leadre.evaluate.baselines import ad_engagements, baseline_class, make_baseline

    settings = params.evaluate.baselines.get(name) or baseline_class(name).Params()
    return make_baseline(name, settings).fit(ad_engagements(events, now))


def _baseline_rows(baseline, users: np.ndarray, top_n: int, live_ids: np.ndarray,
                   exclude: list[np.ndarray] | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Each user's top-N live ads by the baseline. A baseline ranks without scores: 1/rank keeps the store's order
    (scores compare within a list only, as the LLM's do)."""
    from leadre.units import PAD

    lists = baseline.recommend(users, top_n, live_ids, exclude)
    scores = 1.0 / np.arange(1, top_n + 1)
    return [(int(user), row[row != PAD], scores[:int((row != PAD).sum())]) for user, row in zip(users, lists)]


def run_nearline(params: Params, shard: Shard | None = None) -> dict[str, Any]:
    """The near-line refresh; with `shard` (i/n) only that shard's users, staged for `merge_nearline` to publish."""
    from leadre.data.tables import read_tables
    from leadre.registry.models import champion_bundle
    from leadre.serve.bundle import ServingBundle, write_bundle
    from leadre.serve.service import store_url
    from leadre.serve.store import open_store

    started_at = datetime.now(UTC)
    started = time.perf_counter()
    cfg = params.nearline
    set_cpu_threads(params.model.cpu_threads)
    champion = champion_bundle(params)
    now = pd.Timestamp(params.data.snapshot_time)
    tables = read_tables(params.path(params.data.validated_dir))
    ads, events = tables["ads"], tables["events"]
    live = serving_ads(params, ads, events, now)

    recent = events[events["ts"] >= now - pd.Timedelta(days=cfg.active_days)]
    users = np.unique(recent["user_id"].to_numpy(np.int64))
    if cfg.max_users and len(users) > cfg.max_users:
        users = users[:cfg.max_users]
    users = shard_users(users, shard)
    engaged = events[(events["domain"] == "ad") & events["user_id"].isin(users)]
    engaged_by_user = engaged.groupby("user_id")["object_id"].unique()
    exclude = [np.asarray(engaged_by_user.get(u, []), dtype=np.int64) for u in users] if cfg.exclude_engaged else None
    del recent

    if champion is None:
        # The first retrain's gate can hold its candidate back: serve the best baseline's lists meanwhile, labelled,
        # rather than nothing (docs/serving.md, "First run: the gate failed").
        baseline = fallback_baseline(params)
        log.warning("%s has no champion yet: publishing the %s baseline's lists as the labelled fallback",
                    params.registry.model_name, baseline)
        fitted = _fitted_baseline(params, baseline, events, now)
        rows = _baseline_rows(fitted, users, cfg.top_n, live["ad_id"].to_numpy(np.int64), exclude)
        version, label = None, fallback_label(baseline)
    else:
        from leadre.evaluate.baselines import ad_engagements

        channel = _fitted_baseline(params, params.fusion.channel, events, now) if cfg.fusion else None
        engagements = ad_engagements(events, now)  # the popularity-shift correction's p_now
        del events  # load_sources turns the frame into its event log: holding it here would double it in memory
        rows = _champion_rows(params, champion, tables, now, live, users, exclude, channel, engagements)
        version = label = champion.version
    generation_seconds = time.perf_counter() - started
    if shard is not None:
        return stage_shard(params, shard, rows, label, started_at, generation_seconds)

    store = open_store(store_url(params))
    try:
        info = store.write_snapshot(rows, model_version=label, created_at=started_at)
    finally:
        store.close()
    write_bundle(params.path(params.serve.ads_file), ServingBundle(version, live, ads_version=info.snapshot_id))
    seconds = time.perf_counter() - started
    # model_version: the registry version that ranked the lists (None for the fallback); source: what did
    summary = {"users": len(rows), "model_version": version, "source": label if version is None else "champion",
               "snapshot_id": info.snapshot_id, "seconds": seconds,
               "users_per_second": len(rows) / generation_seconds if rows else 0.0, "live_ads": len(live)}
    log.info("near-line: %s", summary)
    return summary


def _champion_rows(params: Params, champion, tables: dict[str, pd.DataFrame], now: pd.Timestamp,
                   live: pd.DataFrame, users: np.ndarray, exclude: list[np.ndarray] | None,
                   channel, engagements: pd.DataFrame) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The champion's top-N per user: beam search over fresh prompts, fused with the ID channel when configured."""
    from leadre.decode.recommender import LlmRecommender, top_k
    from leadre.prompts.build import load_sources, serving_prompts

    cfg = params.nearline
    sources = load_sources(params, tables)  # the same tables: the event log replaces the events frame
    try:
        recommender = LlmRecommender(champion.folder, params.decode, live_ad_ids=live["ad_id"].to_numpy())
    except ModelError as err:
        # nothing is published: the store keeps its snapshot, the ads file its live ads
        raise ModelError(f"champion version {champion.version} of {params.registry.model_name}: {err}") from None
    ecpm = pd.Series(live["ecpm"].to_numpy(), index=live["ad_id"])
    industry = pd.Series(live["industry"].to_numpy(), index=live["ad_id"])
    prior = recommender.popularity_shift(engagements)
    rows: list[tuple[int, np.ndarray, np.ndarray]] = []
    started = time.perf_counter()
    for start in range(0, len(users), cfg.users_per_batch):
        batch = users[start:start + cfg.users_per_batch]
        batch_exclude = exclude[start:start + len(batch)] if exclude else None
        generated = recommender.generate(serving_prompts(params, sources, batch, now),
                                         beam_width=max(params.decode.beam_width, cfg.top_n), exclude=batch_exclude)
        ids, scores = top_k(generated, cfg.top_n, batch_exclude, ecpm, industry, params.decode.value_weight,
                            params.decode.diversity_penalty, prior)
        if channel is not None:  # merged retrieval: the LLM's lists fused with the ID channel's
            from leadre.decode.fusion import fuse

            other, shares = channel.recommend(batch, params.fusion.depth, live["ad_id"].to_numpy(np.int64),
                                              batch_exclude, return_shares=True)
            ids, scores = fuse(ids, scores, other, shares, cfg.top_n, params.fusion)
        for user, row_ids, row_scores in zip(batch, ids, scores):
            keep = row_ids >= 0
            rows.append((int(user), row_ids[keep], row_scores[keep]))
        # a line per batch: a progress bar redraws itself line after line in a log file (make run, Airflow)
        log.info("near-line: %d/%d users, %.1f users/s", len(rows), len(users),
                 len(rows) / max(time.perf_counter() - started, 1e-9))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Sharded runs: `leadre nearline --shard i/n` per shard (a pod each on Kubernetes), then `leadre nearline --merge n`.
# Shards own users by a stable hash of the user id and stage their candidates in the store; the merge publishes
# them with one swap and writes the serving ads file. Prompts and beam search are per user, so the candidates are
# those of one unsharded run.


def shard_users(users: np.ndarray, shard: Shard | None) -> np.ndarray:
    """The active users a shard owns (all of them unsharded); chosen after `max_users`, as one run chooses."""
    return users if shard is None else users[shard.owns(users)]


def staging_name(params: Params, model_version: str, shards: int) -> str:
    """The staged snapshot's name, the same in every shard and the merge of one run: a hash of what makes the run
    (model, version, data snapshot, shard count). A merge after the champion changed finds no parts: it fails
    and publishes nothing, rather than mixing two models' candidates."""
    key = "|".join([params.registry.model_name, model_version, str(params.data.snapshot_time), str(shards)])
    return "nl_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def stage_shard(params: Params, shard: Shard, rows: list, model_version: str, started_at: datetime,
                generation_seconds: float) -> dict[str, Any]:
    from leadre.serve.service import store_url
    from leadre.serve.store import open_store

    store = open_store(store_url(params))
    try:
        users = store.stage_part(staging_name(params, model_version, shard.count), shard.index, shard.count, rows,
                                 model_version, created_at=started_at)
    finally:
        store.close()
    summary = {"shard": str(shard), "users": users, "model_version": model_version,
               "users_per_second": users / generation_seconds if users else 0.0}
    log.info("near-line shard %s: %s", shard, summary)
    return summary


def merge_nearline(params: Params, shards: int) -> dict[str, Any]:
    """Publish the candidates the `shards` shards staged (one swap) and write the serving ads file."""
    from leadre.data.tables import read_tables
    from leadre.registry.models import champion_bundle
    from leadre.serve.bundle import ServingBundle, write_bundle
    from leadre.serve.service import store_url
    from leadre.serve.store import open_store

    started = time.perf_counter()
    champion = champion_bundle(params)
    # the shards staged under the label the unsharded run would publish: the champion's version, or the fallback's
    version = champion.version if champion is not None else None
    label = version if version is not None else fallback_label(fallback_baseline(params))
    tables = read_tables(params.path(params.data.validated_dir), names=("ads", "events"))
    live = serving_ads(params, tables["ads"], tables["events"], pd.Timestamp(params.data.snapshot_time))
    store = open_store(store_url(params))
    try:
        info = store.publish_staged(staging_name(params, label, shards), shards)
    finally:
        store.close()
    write_bundle(params.path(params.serve.ads_file), ServingBundle(version, live, ads_version=info.snapshot_id))
    summary = {"users": info.users, "model_version": version, "source": "champion" if version is not None else label,
               "snapshot_id": info.snapshot_id, "shards": shards, "seconds": time.perf_counter() - started, "live_ads": len(live)}
    log.info("near-line merge: %s", summary)
    return summary
