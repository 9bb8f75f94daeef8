"""`leadre evaluate`: the candidate model, the champion and the ID-based baselines on one split, side by side.

Protocol (full ranking, as RecBole's): one ranking per user at the split's cut-off; relevant = every ad the user
engaged with in the split's window (all intents); candidates = the live ads, for every method; ads the user already
engaged with before the cut-off are excluded from every ranking (`evaluate.exclude_engaged`). Baselines learn from
ad engagements strictly before the cut-off, so no method sees the answers. Under `evaluate.protocol:
leave_last_out` the cut-off is each user's own (the instant of their held-out engagement), and so are the
baselines' history and the exclusions (`leave_out_history`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from leadre.config import Params
from leadre.data.tables import read_tables
from leadre.evaluate import CANDIDATE, RUN_RECORD, SUMMARY
from leadre.evaluate import metrics as m
from leadre.evaluate.bootstrap import paired_lift
from leadre.evaluate.baselines import ad_engagements, engaged_ads, make_baseline
from leadre.io import write_json
from leadre.prompts import MAIN_TASK
from leadre.prompts.pairs import leave_out_targets
from leadre.runtime import set_cpu_threads
from leadre.sids.build import load_sid_table

log = logging.getLogger(__name__)

TRADEOFF_K = 10  # the list length the relevance/value trade-off is measured at (NDCG@10, eCPM of the top 10)
FUSION = "fusion"  # the candidate's lists merged with the `fusion.channel` baseline's: a row of its own


@dataclass
class EvalSet:
    """One split's users with their prompt, relevant ads and exclusions, plus what the metrics look ads up in."""

    user_ids: np.ndarray
    prompts: list[list[dict]]
    relevant: list[np.ndarray]
    exclude: list[np.ndarray] | None
    cutoff: pd.Timestamp  # the split's cut-off; under leave_last_out the latest user's (new ads count from it)
    engagements: pd.DataFrame  # ad engagements before each user's cut-off: what baselines learn from
    candidates: np.ndarray  # live ad ids
    ads: pd.DataFrame  # indexed by ad_id: industry, ecpm, created_at
    user_cutoffs: pd.Series | None = None  # leave_last_out: each scored user's own cut-off, by user_id


def load_eval_set(params: Params) -> EvalSet:
    ev = params.evaluate
    folder = params.path(params.prompts.out_dir) / "sft" / ev.split
    files = sorted(folder.glob("*.parquet"))
    rows = pd.concat([pd.read_parquet(f, columns=["prompt", "task", "user_id", "cutoff", "all_target_ad_ids"])
                      for f in files], ignore_index=True) if files else pd.DataFrame({"task": []})
    rows = rows[rows["task"] == MAIN_TASK]
    if rows.empty:
        raise FileNotFoundError(f"{folder}: no main-task rows to evaluate (run `leadre prompts build` first)")
    # one ranking per user: intent-aware pairs of one user share the prompt; their targets are pooled
    by_user = rows.groupby("user_id", sort=True)
    users = by_user["prompt"].first()
    if ev.max_users and len(users) > ev.max_users:
        users = users.sample(n=ev.max_users, random_state=ev.seed).sort_index()
    relevant = by_user["all_target_ad_ids"].agg(lambda lists: np.unique(np.concatenate(list(lists))))
    tables = read_tables(params.path(params.data.validated_dir), ("ads", "events"))
    user_cutoffs = None
    if ev.protocol == "leave_last_out":
        user_cutoffs = by_user["cutoff"].first()
        engagements = leave_out_history(ad_engagements(tables["events"]), ev.split)
        cutoff = pd.Timestamp(user_cutoffs.max())
    else:
        cutoff = pd.Timestamp(rows["cutoff"].iloc[0])
        engagements = ad_engagements(tables["events"], before=cutoff)
    user_ids = users.index.to_numpy(np.int64)
    sid_table = load_sid_table(params.path(params.sids.out_dir))
    return EvalSet(
        user_ids=user_ids, prompts=[list(p) for p in users.tolist()],
        relevant=[relevant[u].astype(np.int64) for u in user_ids],
        exclude=engaged_ads(engagements, user_ids) if ev.exclude_engaged else None,
        cutoff=cutoff, engagements=engagements,
        candidates=sid_table.loc[sid_table["live"], "ad_id"].to_numpy(np.int64),
        ads=tables["ads"].set_index("ad_id")[["industry", "ecpm", "created_at"]],
        user_cutoffs=None if user_cutoffs is None else user_cutoffs.reindex(user_ids))


def leave_out_history(engagements: pd.DataFrame, split: str) -> pd.DataFrame:
    """What the baselines learn from under leave_last_out: every engagement strictly before the user's own target
    of `split` (the last new ad for test, the one before it for valid), found exactly as the prompts find it; users
    too short to be scored keep all of theirs. Their exclusion lists then come from this same history."""
    ts = engagements["ts"].dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    user, ad = engagements["user_id"].to_numpy(np.int64), engagements["ad_id"].to_numpy(np.int64)
    users, valid, test = leave_out_targets(user, ts, ad)
    end = pd.Series(ts[test if split == "test" else valid], index=users)
    keep = ts < end.reindex(user).fillna(np.iinfo(np.int64).max).to_numpy()
    return engagements[keep].reset_index(drop=True)


def score_lists(params: Params, data: EvalSet, recommended: np.ndarray,
                per_user: dict[str, pd.DataFrame] | None = None, name: str = "") -> dict[str, float]:
    """Every metric of one method's lists: accuracy overall and by user/ad group, validity, coverage, value.

    `per_user[name]` receives the per-user accuracy rows, which the lift intervals resample.
    """
    ev = params.evaluate
    ks = tuple(ev.ks)
    rows = m.per_row_metrics(recommended, data.relevant, ks)
    if per_user is not None:
        per_user[name] = rows
    out = {name: float(value) for name, value in rows.mean().items()}
    out["validity"] = m.validity(recommended, data.candidates)
    out["coverage"] = m.coverage(recommended, len(data.candidates))
    out["industry_diversity"] = m.industry_diversity(recommended, data.ads["industry"])
    out["mean_ecpm"] = m.mean_ecpm(recommended, data.ads["ecpm"])
    history = data.engagements.groupby("user_id").size().reindex(data.user_ids, fill_value=0).to_numpy()
    cold = history <= ev.cold_user_max_engagements
    new_after = data.cutoff - pd.Timedelta(days=ev.new_ad_days)
    new_ads = set(data.ads.index[data.ads["created_at"] >= new_after].tolist())
    groups = {"warm_users": ~cold, "cold_users": cold}
    for group, mask in groups.items():
        out[f"{group}.share"] = float(mask.mean())
        if mask.any():
            out[f"{group}.hr@10"] = float(rows.loc[mask, "hr@10"].mean())
            out[f"{group}.ndcg@10"] = float(rows.loc[mask, "ndcg@10"].mean())
    # old / new ads: the same lists scored against only the relevant ads of that kind, over users who have one
    for group, keep in {"new_ads": True, "old_ads": False}.items():
        relevant = [r[np.array([(a in new_ads) == keep for a in r], dtype=bool)] if len(r) else r
                    for r in data.relevant]
        has = np.array([len(r) > 0 for r in relevant])
        out[f"{group}.users"] = float(has.sum())
        if has.any():
            sub = m.per_row_metrics(recommended[has], [r for r, h in zip(relevant, has) if h], ks)
            out[f"{group}.hr@10"] = float(sub["hr@10"].mean())
            out[f"{group}.ndcg@10"] = float(sub["ndcg@10"].mean())
    return out


def lift_intervals(params: Params, per_user: dict[str, pd.DataFrame], methods: list[str],
                   references: list[str]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """lifts[method][reference][metric]: the paired bootstrap interval of method's relative lift over reference."""
    boot = params.evaluate.bootstrap
    metrics = sorted({"ndcg@10", "hr@10", params.gate.primary_metric} & set(next(iter(per_user.values())).columns))
    return {method: {ref: {metric: paired_lift(per_user[method][metric].to_numpy(), per_user[ref][metric].to_numpy(),
                                               boot.resamples, boot.confidence, boot.seed).as_dict()
                           for metric in metrics}
                     for ref in references if ref != method}
            for method in methods}


def _baselines(params: Params):
    """The baselines `evaluate.baselines` lists, in its order."""
    return [make_baseline(name, settings) for name, settings in params.evaluate.baselines.items()]


def run_evaluate(params: Params) -> dict[str, Any]:
    from leadre.decode.fusion import fuse
    from leadre.decode.recommender import LlmRecommender, top_k
    from leadre.registry.models import champion_bundle
    from leadre.tracking import mlflow_name, step_run, write_receipt

    ev, gen = params.evaluate, params.decode
    set_cpu_threads(params.model.cpu_threads)
    started = time.perf_counter()
    data = load_eval_set(params)
    log.info("evaluate: %d users of the %s split loaded in %.1f s", len(data.user_ids), ev.split,
             time.perf_counter() - started)
    k_max = max(ev.ks)
    methods: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    tradeoff: list[dict[str, float]] = []
    per_user: dict[str, pd.DataFrame] = {}
    baseline_names: list[str] = []
    bundles = {CANDIDATE: params.path(ev.candidate_dir)}
    bundles.update({name: params.path(folder) for name, folder in ev.compare_dirs.items()})
    inputs = {"prompts": params.path(params.prompts.out_dir), "candidate_model": bundles[CANDIDATE]}
    with step_run(params, "evaluate", inputs) as run:
        import mlflow

        champion = champion_bundle(params)
        if champion is not None:
            bundles["champion"] = champion.folder
            mlflow.set_tag("leadre.champion_version", champion.version)
        llm_lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # ids and final scores, for the fusion
        for name, folder in bundles.items():
            started = time.perf_counter()
            recommender = LlmRecommender(folder, gen)
            generated = recommender.generate(data.prompts, beam_width=max(gen.beam_width, k_max),
                                             exclude=data.exclude)
            timings[name] = time.perf_counter() - started
            log.info("evaluate: %s generated %d users' lists in %.1f s (%.1f users/s)", name, len(data.user_ids),
                     timings[name], len(data.user_ids) / max(timings[name], 1e-9))
            prior = recommender.popularity_shift(data.engagements)  # each model its own: p_train is its training's
            ids, scores = top_k(generated, max(gen.beam_width, k_max), data.exclude, data.ads["ecpm"],
                                data.ads["industry"], gen.value_weight, gen.diversity_penalty, prior)
            llm_lists[name] = ids, scores
            methods[name] = score_lists(params, data, ids[:, :k_max], per_user, name)
            if name == CANDIDATE:  # the value/diversity trade-off reuses the same beams: no extra generation
                for weight in ev.value_weights:
                    for penalty in ev.diversity_penalties:
                        # top-10 lists: re-ranking only changes which of the beams make the list when K < beams
                        ids, _ = top_k(generated, TRADEOFF_K, data.exclude, data.ads["ecpm"], data.ads["industry"],
                                       weight, penalty, prior)
                        point = score_lists(params, data, np.pad(ids, ((0, 0), (0, k_max - TRADEOFF_K)),
                                                                 constant_values=m.PAD))
                        tradeoff.append({"value_weight": weight, "diversity_penalty": penalty,
                                         "ndcg@10": point["ndcg@10"], "mean_ecpm": point["mean_ecpm"],
                                         "industry_diversity": point["industry_diversity"]})
        channel_lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # ids and shares, for the fusion
        for baseline in _baselines(params):
            started = time.perf_counter()
            baseline.fit(data.engagements)
            ids, shares = baseline.recommend(data.user_ids, max(k_max, params.fusion.depth), data.candidates,
                                             data.exclude, return_shares=True)
            timings[baseline.name] = time.perf_counter() - started
            log.info("evaluate: baseline %s fitted and ranked in %.1f s", baseline.name, timings[baseline.name])
            channel_lists[baseline.name] = ids, shares
            methods[baseline.name] = score_lists(params, data, ids[:, :k_max], per_user, baseline.name)
            baseline_names.append(baseline.name)
        fused, _ = fuse(*llm_lists[CANDIDATE], *channel_lists[params.fusion.channel], k_max, params.fusion)
        methods[FUSION] = score_lists(params, data, fused, per_user, FUSION)
        started = time.perf_counter()
        lifts = lift_intervals(params, per_user, [*bundles, FUSION],
                               baseline_names + (["champion"] if champion else []))
        log.info("evaluate: bootstrap lift intervals (%d resamples) in %.1f s", ev.bootstrap.resamples,
                 time.perf_counter() - started)

        summary = {"split": ev.split, "users": int(len(data.user_ids)), "cutoff": str(data.cutoff),
                   "champion_version": champion.version if champion else None, "methods": methods,
                   "baselines": baseline_names,  # the gate's reference set when there is no champion
                   "lifts": lifts, "tradeoff": tradeoff}
        from leadre.evaluate.report import run_provenance, write_reports

        record = {"run_id": run.info.run_id, "provenance": run_provenance(params, run), "seconds": timings}
        out_dir = params.path(ev.reports_dir)
        write_reports(params, summary, record, out_dir)
        log.info("evaluate: report %s", out_dir / "report.html")
        # DVC metrics (`dvc metrics show`, `dvc exp show`): the headline only; summary.json keeps every metric
        from leadre.evaluate.gate import headline_metrics

        headline = headline_metrics(methods, lifts, params.gate, baseline_names)
        write_json(params.path(ev.metrics_file), {group: {k: round(v, 6) for k, v in values.items()}
                                                   for group, values in headline.items()})
        for name, values in methods.items():
            mlflow.log_metrics({mlflow_name(f"{name}.{k}"): v for k, v in values.items()})
        for name, by_reference in lifts.items():
            mlflow.log_metrics({mlflow_name(f"{name}.lift_over_{ref}.{metric}.{end}"): value[end]
                                for ref, by_metric in by_reference.items() for metric, value in by_metric.items()
                                for end in ("lift", "low", "high") if np.isfinite(value[end])})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    write_json(out_dir / RUN_RECORD, record)
    write_json(out_dir / SUMMARY, summary)
    write_receipt(params, "evaluate")
    return summary
