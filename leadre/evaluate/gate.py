"""`leadre gate`: may the candidate replace the champion? A decision with its reasons, never a silent pass.

The reference is the champion scored in the same evaluation run (same users, split and candidates); with no
champion yet, the best baseline on the primary metric. The candidate passes when
- every recommended ad is a live ad (validity 100%): a hard rule, whatever the reference;
- its primary metric ≥ reference × (1 + `min_relative_lift`);
- no guardrail metric drops by more than its allowed relative share.
Whatever the decision, the candidate is registered as a model version under the `challenger` alias, with the
decision and metrics as tags; only `leadre promote` moves `champion`, and only after a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from leadre.config import GateParams, Params
from leadre.evaluate import CANDIDATE
from leadre.io import read_json, write_json

BASELINES = ("popularity", "itemknn", "sasrec")


@dataclass
class Decision:
    passed: bool
    reference: str  # "champion" or a baseline's name
    reference_kind: str  # champion | baseline
    primary_metric: str
    candidate_value: float
    reference_value: float
    relative_lift: float | None
    reasons: list[str] = field(default_factory=list)
    guardrails: dict[str, dict[str, float]] = field(default_factory=dict)
    challenger_version: str | None = None
    decided_at: str = ""


def relative_change(new: float, old: float) -> float | None:
    return None if old == 0 else (new - old) / old


def decide(methods: dict[str, dict[str, float]], gate: GateParams) -> Decision:
    if CANDIDATE not in methods:
        raise ValueError("the evaluation has no candidate model's metrics")
    primary = gate.primary_metric
    candidate = methods[CANDIDATE]
    if primary not in candidate:
        raise ValueError(f"gate.primary_metric {primary!r} is not an evaluation metric ({sorted(candidate)})")
    if "champion" in methods:
        reference, kind = "champion", "champion"
    else:
        present = [b for b in BASELINES if b in methods]
        if not present:
            raise ValueError("no champion and no baseline to compare the candidate with")
        reference, kind = max(present, key=lambda b: methods[b][primary]), "baseline"
    ref = methods[reference]
    lift = relative_change(candidate[primary], ref[primary])
    decision = Decision(passed=True, reference=reference, reference_kind=kind, primary_metric=primary,
                        candidate_value=candidate[primary], reference_value=ref[primary], relative_lift=lift,
                        decided_at=datetime.now(timezone.utc).isoformat())
    if candidate.get("validity", 0.0) < 1.0:
        decision.passed = False
        decision.reasons.append(f"validity {candidate.get('validity', 0.0):.4f} < 1: some outputs are not live ads")
    needed = ref[primary] * (1 + gate.min_relative_lift)
    if candidate[primary] < needed:
        decision.passed = False
        decision.reasons.append(f"{primary} {candidate[primary]:.4f} < {needed:.4f} (the {reference}'s "
                                f"{ref[primary]:.4f} with a lift of {gate.min_relative_lift:+.1%})")
    else:
        decision.reasons.append(f"{primary} {candidate[primary]:.4f} ≥ {needed:.4f} ({reference} "
                                f"{ref[primary]:.4f}, lift {gate.min_relative_lift:+.1%} required)")
    for metric, max_drop in gate.guardrails.items():
        if metric not in candidate or metric not in ref:
            raise ValueError(f"gate.guardrails names {metric!r}, which the evaluation does not report")
        change = relative_change(candidate[metric], ref[metric]) or 0.0
        decision.guardrails[metric] = {"candidate": candidate[metric], "reference": ref[metric],
                                       "relative_change": change, "max_drop": max_drop}
        if change < -max_drop:
            decision.passed = False
            decision.reasons.append(f"guardrail {metric}: {candidate[metric]:.4f} is {-change:.1%} below the "
                                    f"{reference}'s {ref[metric]:.4f} (at most {max_drop:.0%} allowed)")
    return decision


def run_gate(params: Params, register: bool = True) -> dict[str, Any]:
    """Decide, write the decision file, and register the candidate as the challenger (tagged with the decision)."""
    evaluation = read_json(params.path(params.evaluate.reports_dir) / "summary.json")
    decision = decide(evaluation["methods"], params.gate)
    if register:
        from leadre.registry.models import register_candidate
        from leadre.tracking import dvc_md5, step_run

        bundle = params.path(params.evaluate.candidate_dir)
        inputs = {"candidate_model": bundle, "prompts": params.path(params.prompts.out_dir),
                  "validated": params.path(params.data.validated_dir)}
        with step_run(params, "gate", inputs) as run:
            import mlflow

            mlflow.log_dict(asdict(decision), "gate.json")
            mlflow.log_metric("gate.passed", float(decision.passed))
            candidate = evaluation["methods"][CANDIDATE]
            tags = {"leadre.gate_passed": decision.passed, "leadre.gate_reference": decision.reference,
                    "leadre.evaluate_run_id": evaluation.get("run_id", ""), "leadre.gate_run_id": run.info.run_id,
                    "leadre.base_model": params.model.base_model, **run.data.tags,
                    # MLflow names allow no "@": ndcg@10 is tagged metric.ndcg_at_10
                    **{f"metric.{k.replace('@', '_at_')}": round(v, 6) for k, v in candidate.items() if "." not in k},
                    **{f"data.{name}.md5": dvc_md5(path) for name, path in inputs.items()}}
            tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.") or k == "mlflow.source.git.commit"}
            decision.challenger_version = register_candidate(params, bundle, tags)
    write_json(params.path(params.gate.decision_file), asdict(decision))
    return asdict(decision)
