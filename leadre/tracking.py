"""MLflow tracking shared by every step: where runs go, the parent run of a retrain, and what each run records.

A retrain is one parent run; each step (SFT, DPO, evaluation) is a nested run under it, so the MLflow UI shows a
retrain's models side by side. Steps run in separate processes (DVC stages, Airflow tasks, pods), so they find
their parent by the tag `leadre.retrain_id`: `$LEADRE_RETRAIN_ID` (Airflow sets it to the DAG run id, `make run`
to a timestamp) or, when unset, a fresh id per step.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leadre.config import SQLITE_PREFIX, Params

RETRAIN_ENV = "LEADRE_RETRAIN_ID"
# `dvc exp run` sets these for every stage command (workspace, --temp and --queue runs alike; `dvc repro` sets
# neither): the experiment's name, and the root of the user's repository, where a temp-dir run is not
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
DVC_ROOT_ENV = "DVC_ROOT"
RETRAIN_TAG = "leadre.retrain_id"
STEP_TAG = "leadre.step"
# MLflow 3's UI opens an experiment of unknown kind on the (empty) GenAI traces page; this kind opens it on runs
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Upstream settings that change every later step's result, logged on every run so that runs (ablations above all)
# can be told apart in a compare view; a step's own sections come from the step table (leadre/steps.py)
SHARED_PARAM_SECTIONS = ("prompts.features", "model.base_model")
# transformers' MLflow callback logs every TrainingArguments field (~170) as a param, burying ours in the compare
# view; this, its documented limit, turns that off in a `step_run(..., training=True)`, where the step keeps them as
# one JSON artifact with `log_training_arguments`
HF_MAX_PARAMS_ENV = "MLFLOW_MAX_LOG_PARAMS"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# The user's own setting, read once at import: MLflow writes the variable into os.environ whenever a tracking URI
# is set (for child processes), so reading it later would return whichever store this process used last.
USER_TRACKING_URI = os.environ.get(TRACKING_ENV)
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else params' URI with a relative SQLite path resolved against the params folder."""
    return _store_params(params).url(USER_TRACKING_URI or params.tracking.tracking_uri)


def _store_params(params: Params) -> Params:
    """`params`, rooted where the MLflow store lives: a DVC experiment run in a temporary copy of the repository
    (--temp, --queue) still logs to, and reads the registry of, the user's repository, not a copy deleted after."""
    experiment_root = os.environ.get(DVC_ROOT_ENV) if os.environ.get(DVC_EXPERIMENT_ENV) else None
    return params.model_copy(update={"root": Path(experiment_root)}) if experiment_root else params


def configure(params: Params) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns the experiment id."""
    import mlflow

    from leadre.runtime import quiet_library_bars

    quiet_library_bars()  # MLflow reads its bar's switch at each download: also for callers that skip the CLI

    mlflow.set_system_metrics_sampling_interval(params.tracking.system_metrics_seconds)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    # the registry follows the tracking store only until first use; a process that switches stores (tests, a
    # notebook comparing two workspaces) would register into the first one without this
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URI to the environment for child processes; a child step must resolve its own
    # params (or the user's own variable), so the environment is put back as the user left it
    if USER_TRACKING_URI is None:
        os.environ.pop(TRACKING_ENV, None)
    else:
        os.environ[TRACKING_ENV] = USER_TRACKING_URI
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        # A local store without an explicit location puts artifacts under ./mlruns of whatever folder the step ran
        # in; a tracking server has its own artifact store, which the server (not each client) decides.
        local = uri_is_local(mlflow.get_tracking_uri())
        location = _store_params(params).path(params.tracking.artifact_root).resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(params.tracking.experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        return experiment_id
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # an experiment made before the tag existed
        mlflow.tracking.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                                          EXPERIMENT_KIND)
    return experiment.experiment_id


def uri_is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", "."))


def retrain_id() -> str:
    """$LEADRE_RETRAIN_ID; within a DVC experiment, that and the experiment's name (each experiment of one
    `make ablate` is a retrain of its own); else a fresh id."""
    experiment = os.environ.get(DVC_EXPERIMENT_ENV)
    if experiment:
        return f"{os.environ.get(RETRAIN_ENV) or 'dvc-exp'}:{experiment}"
    return os.environ.get(RETRAIN_ENV) or f"adhoc-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _parent_run_id(experiment_id: str, retrain: str, params: Params) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RETRAIN_TAG}` = '{retrain}' "
                               f"AND tags.`{STEP_TAG}` = 'retrain'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"retrain {retrain}",
                            tags={RETRAIN_TAG: retrain, STEP_TAG: "retrain", **git_tags()})
    # what tells one retrain from another in the runs table, before any step has finished
    for key, value in step_params(params, ()).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def retrain_run(params: Params, step_run_id: str) -> dict[str, str] | None:
    """The retrain (parent) run a step's run belongs to: run_id, retrain_id and its URL in the MLflow UI (`ui`: the
    command that starts one, for a local store). None when the tracking store does not hold that run; a local store
    that does not exist yet is not created by asking."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params)
    if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX):]).exists():
        return None
    try:
        run = MlflowClient(tracking_uri=uri).get_run(step_run_id)
    except MlflowException:
        return None
    parent = run.data.tags.get("mlflow.parentRunId", run.info.run_id)
    local = uri_is_local(uri)
    base = LOCAL_UI if local else uri.rstrip("/")
    return {"run_id": parent, "retrain_id": run.data.tags.get(RETRAIN_TAG, ""),
            "url": f"{base}/#/experiments/{run.info.experiment_id}/runs/{parent}",
            "ui": f"mlflow ui --backend-store-uri {uri}" if local else ""}


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}", item).items()}
    return {prefix: str(value)}


def step_params(params: Params, sections: tuple[str, ...]) -> dict[str, str]:
    """The params a run records: `sections` (dotted: "sft", "data.snapshot_time") and the shared upstream ones,
    flattened to "section.key" = value."""
    dumped = params.model_dump(mode="json")
    found: dict[str, str] = {}
    for dotted in (*SHARED_PARAM_SECTIONS, *sections):
        node: Any = dumped
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found.update(_flatten(dotted, node))
    return {mlflow_name(key): value for key, value in found.items()}


def mlflow_name(key: str) -> str:
    """MLflow names allow no "@": ndcg@10 is logged as ndcg_at_10."""
    return key.replace("@", "_at_")


@contextmanager
def step_run(params: Params, step: str, inputs: dict[str, Path] | None = None,
             training: bool = False) -> Iterator[Any]:
    """A nested MLflow run for `step` under its retrain's parent run, tagged with the code and data versions and
    carrying the params the step reads (its sections of the step table) plus the shared upstream ones.

    `training`: a Trainer runs inside and logs its TrainingArguments with `log_training_arguments`, so its MLflow
    callback logs none as params."""
    import mlflow

    from leadre.steps import STEPS

    experiment_id = configure(params)
    retrain = retrain_id()
    parent = _parent_run_id(experiment_id, retrain, params)
    tags = {RETRAIN_TAG: retrain, STEP_TAG: step, **git_tags(),
            **{f"data.{name}.md5": dvc_md5(path) for name, path in (inputs or {}).items()}}
    sections = STEPS[step].params if step in STEPS else ()
    previous_limit = os.environ.get(HF_MAX_PARAMS_ENV)
    if training:
        os.environ[HF_MAX_PARAMS_ENV] = "0"
    try:
        with mlflow.start_run(run_id=parent):
            with mlflow.start_run(run_name=step, nested=True, experiment_id=experiment_id, tags=tags,
                                  log_system_metrics=True) as run:
                mlflow.log_params(step_params(params, sections))
                yield run
    finally:
        if previous_limit is None:
            os.environ.pop(HF_MAX_PARAMS_ENV, None)
        else:
            os.environ[HF_MAX_PARAMS_ENV] = previous_limit


def log_training_arguments(arguments: Any) -> None:
    """A trainer's full TrainingArguments as `training_arguments.json` of the active run (not ~170 params)."""
    import mlflow

    mlflow.log_dict(json.loads(arguments.to_json_string()), "training_arguments.json")


def log_to_parent(run: Any, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Metrics and tags on the retrain's parent run of the nested `run`: what a retrain ended with, on its row."""
    import math

    from mlflow.tracking import MlflowClient

    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return
    client = MlflowClient()
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            client.log_metric(parent, key, float(value))
    for key, value in tags.items():
        client.set_tag(parent, key, value)


def git_tags() -> dict[str, str]:
    """The code version: commit and whether the working tree had uncommitted changes (empty outside git).

    Changes to what the pipeline itself writes do not count: `make run` rewrites tracked DVC outputs (metrics,
    reports, gate.json) and dvc.lock before the later steps start, so a fresh clone's own run would otherwise read
    dirty. Those files are versioned by dvc.lock, not by the commit; dirty means code or params differ from it.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             check=True).stdout.strip()
        # -z: paths as they are, NUL-separated, relative to the top level
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"], cwd=top,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    changed, entries = [], iter(status.split("\0"))
    for entry in entries:
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: its source path follows as an entry of its own
                changed.append(next(entries, ""))
    written = pipeline_outputs(Path(top))
    dirty = [path for path in changed if not any(path == out or path.startswith(out + "/") for out in written)]
    return {"mlflow.source.git.commit": commit.strip(), "git.dirty": str(bool(dirty)).lower()}


def pipeline_outputs(root: Path) -> set[str]:
    """dvc.lock and every output it records, as paths relative to `root` (empty without a dvc.lock)."""
    import yaml

    lock = root / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return set()
    return {"dvc.lock"} | {str(out["path"]).rstrip("/") for stage in stages.values()
                           for out in stage.get("outs", []) if isinstance(out, dict) and "path" in out}


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_md5(path: Path | str) -> str:
    """The hash DVC records in dvc.lock for this file or folder, so a run names the exact dataset version.

    DVC 3: a file's md5; a folder's is the md5 of the sorted JSON list of its files' {md5, relpath}, plus ".dir".
    """
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    if not path.is_dir():
        return "missing"
    entries = [{"md5": _file_md5(f), "relpath": f.relative_to(path).as_posix()}
               for f in sorted(path.rglob("*")) if f.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def write_receipt(params: Params, step: str) -> None:
    """Say that this workspace's MLflow store (and registry) holds `step`'s run: its declared output for DVC, which
    cannot see the store (leadre/steps.py, receipt). Written last, so a failed step leaves none."""
    from leadre.io import write_json

    write_json(params.path(params.tracking.receipts_dir) / step, {"step": step})
