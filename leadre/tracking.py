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
RETRAIN_TAG = "leadre.retrain_id"
STEP_TAG = "leadre.step"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
# The user's own setting, read once at import: MLflow writes the variable into os.environ whenever a tracking URI
# is set (for child processes), so reading it later would return whichever store this process used last.
USER_TRACKING_URI = os.environ.get(TRACKING_ENV)
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default


def tracking_uri(params: Params) -> str:
    """$MLFLOW_TRACKING_URI, else params' URI with a relative SQLite path resolved against the params folder."""
    return params.url(USER_TRACKING_URI or params.tracking.tracking_uri)


def configure(params: Params) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns the experiment id."""
    import mlflow

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
    if experiment is not None:
        return experiment.experiment_id
    # A local store without an explicit location puts artifacts under ./mlruns of whatever folder the step ran in;
    # a tracking server has its own artifact store, which the server (not each client) decides.
    local = uri_is_local(mlflow.get_tracking_uri())
    location = params.path(params.tracking.artifact_root).resolve().as_uri() if local else None
    return mlflow.create_experiment(params.tracking.experiment, artifact_location=location)


def uri_is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", "."))


def retrain_id() -> str:
    return os.environ.get(RETRAIN_ENV) or f"adhoc-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _parent_run_id(experiment_id: str, retrain: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RETRAIN_TAG}` = '{retrain}' "
                               f"AND tags.`{STEP_TAG}` = 'retrain'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"retrain {retrain}",
                            tags={RETRAIN_TAG: retrain, STEP_TAG: "retrain", **git_tags()})
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


@contextmanager
def step_run(params: Params, step: str, inputs: dict[str, Path] | None = None) -> Iterator[Any]:
    """A nested MLflow run for `step` under its retrain's parent run, tagged with the code and data versions."""
    import mlflow

    experiment_id = configure(params)
    retrain = retrain_id()
    parent = _parent_run_id(experiment_id, retrain)
    tags = {RETRAIN_TAG: retrain, STEP_TAG: step, **git_tags(),
            **{f"data.{name}.md5": dvc_md5(path) for name, path in (inputs or {}).items()}}
    with mlflow.start_run(run_id=parent):
        with mlflow.start_run(run_name=step, nested=True, experiment_id=experiment_id, tags=tags,
                              log_system_metrics=True) as run:
            yield run


def git_tags() -> dict[str, str]:
    """The code version: commit and whether the working tree had uncommitted changes (empty outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit.strip(), "git.dirty": str(bool(dirty.strip())).lower()}


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
