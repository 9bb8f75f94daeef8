"""`leadre gate`: may the candidate replace the champion? A decision with its reasons, never a silent pass.

The reference is the champion scored in the same evaluation run (same users, split and candidates); with no
champion yet, the best on the primary metric of the baselines that evaluation ran (its summary's `baselines`). The candidate passes when
- every recommended ad is a live ad (validity 100%): a hard rule, whatever the reference;
- the LOW end of the paired bootstrap interval of its primary metric's relative lift over the reference (from the
  evaluation's summary) is above `min_relative_lift`: a lift that could be noise is no lift;
- no guardrail metric drops by more than its allowed relative share.
Anything the decision rests on that is missing or NaN fails it, with a reason: a gate that cannot tell, says no.
Whatever the decision, the candidate is registered as a model version under the `challenger` alias, with the
decision and metrics as tags; only `leadre promote` moves `champion`, and only a version whose tag says it passed.
Except where the run must leave the registry alone (`registry_hold`: a DVC experiment, a feature ablation,
`--no-register`): then the decision is made, logged and written all the same, and nothing is registered.
`--dry-run` decides and writes nothing at all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from leadre.config import GateParams, Params
from leadre.evaluate import CANDIDATE, SUMMARY, evaluation_run
from leadre.io import read_json, write_json
from leadre.registry.models import GATE_PASSED_TAG, GATE_REASONS_TAG

# what a retrain is judged by at a glance: `dvc metrics show`/`dvc exp show` (evaluate.metrics_file) and the parent
# MLflow run; every metric of every method stays in the evaluation's summary.json
HEADLINE_METRICS = ("ndcg@10", "hr@10", "coverage", "industry_diversity", "mean_ecpm", "validity")

@dataclass
class Decision:
    passed: bool
    reference: str  # "champion" or a baseline's name
    reference_kind: str  # champion | baseline
    primary_metric: str
    candidate_value: float
    reference_value: float
    relative_lift: float | None
    # the paired bootstrap interval of relative_lift; None when the evaluation has none (the gate then fails)
    lift_low: float | None = None
    lift_high: float | None = None
    confidence: float | None = None
    min_relative_lift: float = 0.0
    reasons: list[str] = field(default_factory=list)
    guardrails: dict[str, dict[str, float]] = field(default_factory=dict)
    challenger_version: str | None = None
    registry_skipped: str | None = None  # why the candidate was not registered (see `registry_hold`)
    # No time of decision: gate.json is a DVC output, the same for the same evaluation (the gate's MLflow run has it)

    def fail(self, reason: str) -> None:
        self.passed = False
        self.reasons.append(reason)


def relative_change(new: float, old: float) -> float | None:
    return None if old == 0 else (new - old) / old


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _reference(methods: dict[str, dict[str, float]], primary: str,
               baselines: Sequence[str]) -> tuple[str, str, list[str]]:
    """(reference, kind, names of baselines whose primary metric is not a number: the best cannot be told)."""
    if "champion" in methods:
        return "champion", "champion", []
    present = [b for b in baselines if b in methods]
    if not present:
        raise ValueError("no champion and no baseline to compare the candidate with (the evaluation summary's "
                         "`baselines` names none: re-run `leadre evaluate`)")
    for b in present:
        if primary not in methods[b]:
            raise ValueError(f"gate.primary_metric {primary!r} is missing from the {b} baseline's metrics")
    undefined = [b for b in present if not _finite(methods[b][primary])]
    best = best_baseline(methods, primary, present)
    return (best if best is not None else present[0]), "baseline", undefined


def best_baseline(methods: Mapping[str, Mapping[str, Any]], primary: str, baselines: Sequence[str]) -> str | None:
    """The baseline of `baselines` best on `primary` among those whose value is a number; None when none is."""
    scored = [b for b in baselines if _finite(methods.get(b, {}).get(primary))]
    return max(scored, key=lambda b: methods[b][primary]) if scored else None


def _interval(lifts: Mapping[str, Any], reference: str, primary: str) -> dict[str, float] | None:
    """The candidate's lift interval over `reference`, or None when the summary has none in the expected shape."""
    found = lifts.get(CANDIDATE, {}).get(reference, {}).get(primary) if isinstance(lifts, Mapping) else None
    if not isinstance(found, Mapping) or any(key not in found for key in ("lift", "low", "high", "confidence")):
        return None
    return {key: found[key] for key in ("lift", "low", "high", "confidence")}


def decide(methods: dict[str, dict[str, float]], lifts: Mapping[str, Any], gate: GateParams,
           baselines: Sequence[str] = ()) -> Decision:
    """The decision from an evaluation's `methods` (metric values), `lifts` (paired bootstrap intervals) and
    `baselines` (which methods are baselines: the references when there is no champion)."""
    if CANDIDATE not in methods:
        raise ValueError("the evaluation has no candidate model's metrics")
    primary = gate.primary_metric
    candidate = methods[CANDIDATE]
    if primary not in candidate:
        raise ValueError(f"gate.primary_metric {primary!r} is not an evaluation metric ({sorted(candidate)})")
    reference, kind, undefined_baselines = _reference(methods, primary, baselines)
    ref = methods[reference]
    if primary not in ref:
        raise ValueError(f"gate.primary_metric {primary!r} is missing from the {reference}'s metrics")
    interval = _interval(lifts, reference, primary)
    point = (relative_change(candidate[primary], ref[primary])
             if _finite(candidate[primary]) and _finite(ref[primary]) else math.nan)
    decision = Decision(passed=True, reference=reference, reference_kind=kind, primary_metric=primary,
                        candidate_value=candidate[primary], reference_value=ref[primary], relative_lift=point,
                        lift_low=interval["low"] if interval else None,
                        lift_high=interval["high"] if interval else None,
                        confidence=interval["confidence"] if interval else None,
                        min_relative_lift=gate.min_relative_lift)

    validity = candidate.get("validity")
    if not _finite(validity) or validity < 1.0:
        decision.fail(f"validity {validity} is not 1: some outputs are not live ads (or validity was not measured)")
    for name in undefined_baselines:
        decision.fail(f"the {name} baseline's {primary} is {methods[name][primary]}: the best baseline to compare "
                      f"with cannot be told")
    _check_primary(decision, candidate[primary], ref[primary], interval, gate.min_relative_lift)
    for metric, max_drop in gate.guardrails.items():
        if metric not in candidate or metric not in ref:
            raise ValueError(f"gate.guardrails names {metric!r}, which the evaluation does not report")
        new, old = candidate[metric], ref[metric]
        if not (_finite(new) and _finite(old)):
            decision.guardrails[metric] = {"candidate": new, "reference": old, "relative_change": math.nan,
                                           "max_drop": max_drop}
            decision.fail(f"guardrail {metric}: candidate {new} vs {reference} {old} is not a number, so no drop "
                          f"can be ruled out")
            continue
        change = relative_change(new, old) or 0.0  # a reference at 0 leaves nothing to drop from
        decision.guardrails[metric] = {"candidate": new, "reference": old, "relative_change": change,
                                       "max_drop": max_drop}
        if change < -max_drop:
            decision.fail(f"guardrail {metric}: {new:.4f} is {-change:.1%} below the {reference}'s {old:.4f} "
                          f"(at most {max_drop:.0%} allowed)")
    return decision


def _check_primary(decision: Decision, new: Any, old: Any, interval: dict[str, float] | None,
                   min_lift: float) -> None:
    primary, reference = decision.primary_metric, decision.reference
    if not (_finite(new) and _finite(old)):
        decision.fail(f"{primary}: candidate {new} vs {reference} {old} is not a number: no lift can be shown")
        return
    if interval is None:
        decision.fail(f"the evaluation has no bootstrap interval of the candidate's {primary} lift over the "
                      f"{reference} (summary.json lifts): re-run `leadre evaluate`; without one a lift may be noise")
        return
    low, high, confidence = interval["low"], interval["high"], interval["confidence"]
    # low may be -inf (a resample where the reference scored nothing counts as the worst case): a number, a fail
    if not all(isinstance(v, (int, float)) and not math.isnan(v) for v in (interval["lift"], low, high, confidence)):
        decision.fail(f"{primary} lift over the {reference} is undefined (interval {low}..{high}): no decision on "
                      f"an undefined lift")
        return
    described = (f"{primary} {new:.4f} vs the {reference}'s {old:.4f}: lift {interval['lift']:+.2%}, "
                 f"{confidence:.0%} interval [{low:+.2%}, {high:+.2%}]")
    if low > min_lift:
        decision.reasons.append(f"{described}; its low end is above the {min_lift:+.2%} required")
    elif interval["lift"] > min_lift:
        decision.fail(f"{described}; its low end is not above the {min_lift:+.2%} required: the lift may be noise")
    else:
        decision.fail(f"{described}; not above the {min_lift:+.2%} required")


def headline_metrics(methods: Mapping[str, Mapping[str, float]], lifts: Mapping[str, Any], gate: GateParams,
                     baselines: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The candidate's headline metrics (and the gate's), and the interval of its primary metric's lift over the
    reference the gate compares with (omitted when there is none to compare with)."""
    candidate = methods.get(CANDIDATE, {})
    names = dict.fromkeys((gate.primary_metric, *HEADLINE_METRICS, *gate.guardrails))
    headline: dict[str, dict[str, float]] = {"candidate": {m: candidate[m] for m in names if m in candidate}}
    try:
        reference, _, _ = _reference(dict(methods), gate.primary_metric, baselines)
    except ValueError:
        return headline
    interval = _interval(lifts, reference, gate.primary_metric)
    if interval is not None:
        headline[f"lift.{gate.primary_metric}"] = {end: interval[end] for end in ("lift", "low", "high")}
    return headline


def run_gate(params: Params, register: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Decide, register the candidate as the challenger with the decision as its tags, write the decision file.

    The registry's tags are the decision that counts (promotion reads them); the decision file is a report for people.
    `register=False` (and any run `registry_hold` names) decides, logs and writes the decision without registering;
    `dry_run` only returns it.
    """
    reports = params.path(params.evaluate.reports_dir)
    evaluation = read_json(reports / SUMMARY)
    baselines = evaluation.get("baselines", ())
    decision = decide(evaluation["methods"], evaluation.get("lifts", {}), params.gate, baselines)
    if dry_run:
        decision.registry_skipped = "--dry-run: nothing registered, logged or written"
        return asdict(decision)
    from leadre.registry.models import register_candidate, registry_hold
    from leadre.tracking import dvc_md5, log_to_parent, mlflow_name, step_run, write_receipt

    hold = registry_hold(params, register)
    decision.registry_skipped = hold
    bundle = params.path(params.evaluate.candidate_dir)
    inputs = {"candidate_model": bundle, "prompts": params.path(params.prompts.out_dir),
              "validated": params.path(params.data.validated_dir)}
    with step_run(params, "gate", inputs) as run:
        import mlflow

        mlflow.log_dict(asdict(decision), "gate.json")
        mlflow.log_metric("gate.passed", float(decision.passed))
        headline = headline_metrics(evaluation["methods"], evaluation.get("lifts", {}), params.gate, baselines)
        # the retrain's row in the runs table: how the candidate did, and what the gate made of it
        log_to_parent(run, {mlflow_name(f"{group}.{name}"): value for group, values in headline.items()
                            for name, value in values.items()} | {"gate.passed": float(decision.passed)},
                      {GATE_PASSED_TAG: str(decision.passed), GATE_REASONS_TAG: json.dumps(decision.reasons),
                       "leadre.gate_reference": decision.reference,
                       **({"leadre.registry_skipped": hold} if hold else {})})
        if hold is not None:
            mlflow.set_tag("leadre.registry_skipped", hold)
        else:
            candidate = evaluation["methods"][CANDIDATE]
            # the run's own tags first, so nothing in them can overwrite the decision's
            tags = {**run.data.tags, GATE_PASSED_TAG: str(decision.passed),
                    GATE_REASONS_TAG: json.dumps(decision.reasons), "leadre.gate_reference": decision.reference,
                    "leadre.gate_compared_champion": evaluation.get("champion_version") or "",
                    "leadre.gate_primary_metric": decision.primary_metric,
                    "leadre.gate_min_relative_lift": decision.min_relative_lift,
                    "leadre.gate_lift": decision.relative_lift, "leadre.gate_lift_low": decision.lift_low,
                    "leadre.gate_lift_high": decision.lift_high, "leadre.gate_lift_confidence": decision.confidence,
                    # run.json is not a declared input: an evaluation rerun with the same results re-decides nothing
                    "leadre.evaluate_run_id": evaluation_run(reports).get("run_id", ""),
                    "leadre.gate_run_id": run.info.run_id,
                    "leadre.base_model": params.model.base_model,
                    **{f"metric.{mlflow_name(k)}": round(v, 6) for k, v in candidate.items() if "." not in k},
                    **{f"data.{name}.md5": dvc_md5(path) for name, path in inputs.items()}}
            tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.") or k == "mlflow.source.git.commit"}
            decision.challenger_version = register_candidate(params, bundle, tags)
            log_to_parent(run, {}, {"leadre.challenger_version": decision.challenger_version})
    write_json(params.path(params.gate.decision_file), asdict(decision))
    write_receipt(params, "gate")
    return asdict(decision)
