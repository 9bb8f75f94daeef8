"""`leadre status`: where a retrain left things, in a few lines: the gate's decision and why, the report, the
retrain's MLflow run, what the online service would serve, and the command to run next. `make run` ends with it.

Read-only: it reads the decision file, the evaluation's run record, the candidate store and the registry, and creates
no store or registry that is missing (a fresh clone gets "not yet" lines, not an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leadre.config import SQLITE_PREFIX, Params
from leadre.evaluate import evaluation_run

LABEL_WIDTH = 9
GATE_FAILED_DOC = 'docs/serving.md, "First run: the gate failed"'


def status_lines(params: Params) -> list[str]:
    decision = _read_json(params.path(params.gate.decision_file))
    evaluation = evaluation_run(params.path(params.evaluate.reports_dir))
    report = params.path(params.evaluate.reports_dir) / "report.html"
    champion = _champion(params)
    snapshot = _snapshot(params)
    lines = [*_gate(params, decision),
             _line("report", _shown(report) if report.exists() else f"{_shown(report)} (not written yet: `make run`)"),
             *_mlflow(params, evaluation),
             *_serving(champion, snapshot),
             *_next(params, decision, snapshot)]
    return lines


def _line(label: str, text: str) -> str:
    return f"{label:<{LABEL_WIDTH}} {text}"


def _more(text: str) -> str:
    return _line("", text)


def _shown(path: Path) -> str:
    """A path as the user typed their way there: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    from leadre.io import read_json

    return read_json(path) if path.exists() else None


def _gate(params: Params, decision: dict[str, Any] | None) -> list[str]:
    if decision is None:
        return [_line("gate", f"no decision yet ({_shown(params.path(params.gate.decision_file))} is written by "
                              "`leadre gate`)")]
    verdict = "PASSED" if decision.get("passed") else "FAILED"
    reference = decision.get("reference", "?")
    if decision.get("reference_kind") == "baseline":
        reference += " baseline"
    version = decision.get("challenger_version")
    head = f"{verdict} against the {reference}" + (f": the candidate is version {version}" if version else "")
    return [_line("gate", head), *(_more(str(reason)) for reason in decision.get("reasons", []))]


def _mlflow(params: Params, evaluation: dict[str, Any]) -> list[str]:
    """The retrain run of the last evaluation (its run.json names the evaluate step's run)."""
    from leadre.tracking import retrain_run

    step_run_id = evaluation.get("run_id")
    found = retrain_run(params, step_run_id) if step_run_id else None
    if found is None:
        why = "no evaluation yet" if not step_run_id else f"the evaluation's run {step_run_id} is not in the store"
        return [_line("MLflow", f"no retrain run to show ({why})")]
    lines = [_line("MLflow", f"retrain {found['retrain_id'] or found['run_id']}: {found['url']}")]
    if found["ui"]:
        lines.append(_more(f"(start the UI first: {found['ui']})"))
    return lines


def _champion(params: Params) -> str | None:
    """The champion's version; None when there is none, or no local registry yet (not created by asking)."""
    from leadre.tracking import tracking_uri

    uri = tracking_uri(params)
    if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX):]).exists():
        return None
    from leadre.registry.models import CHAMPION, alias_version

    found = alias_version(params, CHAMPION)
    return str(found.version) if found is not None else None


def _snapshot(params: Params):
    from leadre.serve.service import store_url
    from leadre.serve.store import open_store

    url = store_url(params)
    if url.startswith(SQLITE_PREFIX) and not Path(url[len(SQLITE_PREFIX):]).exists():
        return None
    store = open_store(url)
    try:
        return store.snapshot_info()
    finally:
        store.close()


def _serving(champion: str | None, snapshot) -> list[str]:
    from leadre.serve.store import fallback_baseline

    if snapshot is None:
        return [_line("serving", "nothing yet: the candidate store is empty (`leadre nearline` fills it)")]
    made = f"{snapshot.users} users, snapshot of {snapshot.created_at:%Y-%m-%d %H:%M} UTC"
    baseline = fallback_baseline(snapshot.model_version)
    if champion is None and baseline:
        return [_line("serving", f"the labelled fallback: the {baseline} baseline's lists ({made})"),
                _more("no champion yet: answers carry fallback_reason=no_champion")]
    if champion is None:
        return [_line("serving", f"version {snapshot.model_version}'s lists ({made}), but the registry has no "
                                 "champion: answers carry fallback_reason=no_champion")]
    if snapshot.model_version == champion:
        return [_line("serving", f"champion version {champion} ({made})")]
    held = f"the {baseline} baseline's" if baseline else f"version {snapshot.model_version}'s"
    return [_line("serving", f"champion version {champion}, with {held} lists until the next near-line run ({made})")]


def _next(params: Params, decision: dict[str, Any] | None, snapshot) -> list[str]:
    if decision is None:
        return [_line("next", "make run")]
    lines = []
    if snapshot is None:
        lines.append(_line("next", "leadre nearline   # publish the candidates, then:"))
    host = params.serve.host if params.serve.host not in ("0.0.0.0", "::") else "127.0.0.1"
    serve = (f"leadre serve   # then: curl -s http://{host}:{params.serve.port}/v1/recommendations/"
             f"{_some_user(params)}?k=5")
    lines.append(_more(serve) if lines else _line("next", serve))
    if not decision.get("passed"):
        lines.append(_more(f"the gate held the candidate back: what to try next is in {GATE_FAILED_DOC}"))
    return lines


def _some_user(params: Params) -> int:
    """A user id the curl example can ask for: the first validated user (1 before there is data)."""
    import pyarrow.parquet as pq

    users = params.path(params.data.validated_dir) / "users.parquet"
    if not users.exists():
        return 1
    found = pq.ParquetFile(users)
    if found.metadata.num_rows == 0:
        return 1
    return int(found.read_row_group(0, columns=["user_id"]).column(0)[0].as_py())
