"""Running the retrain DAG outside a scheduler, for tests and `python -m bench.orchestration`: an Airflow process
with its own AIRFLOW_HOME (SQLite metadata DB), and one `dag.test()` run in a child process.

Airflow reads its configuration once per process, so everything here starts child processes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from leadre.orchestration.dag_support import DAG_ID, PARAMS_ENV, RETRAIN_ENV, RETRIES_ENV, RUNNER_ENV, SCHEDULE_ENV

def isolated_airflow_env(home: Path | str, dags_folder: Path | str, **extra: str) -> dict[str, str]:
    """Environment for an Airflow process with its own AIRFLOW_HOME (SQLite metadata DB) and this DAGs folder.

    Nothing of the caller's Airflow configuration leaks in (AIRFLOW__* variables are dropped), and the
    LocalExecutor is kept small: the defaults start 32 workers.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k not in {RUNNER_ENV, RETRIES_ENV, SCHEDULE_ENV, PARAMS_ENV,
                                                          RETRAIN_ENV, "MLFLOW_TRACKING_URI"}}
    # `airflow standalone` starts its components as `airflow ...` from PATH, and LocalExecutor workers start
    # `python`: the interpreter running this (the venv) must come first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]])
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


# Run in a child process (Airflow fixes its configuration at import): one dag.test() run of the DAG, then the run's
# and task instances' states and times from the metadata DB, as one JSON line prefixed with DAG_TEST_MARK.
DAG_TEST_MARK = "LEADRE_DAG_TEST "
DAG_TEST_SCRIPT = r"""
import time
started = time.time()
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session

dags_folder, dag_id, conf = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
bag = DagBag(dags_folder)
if bag.import_errors:
    raise SystemExit(f"import errors: {bag.import_errors}")
dag = bag.dags[dag_id]
run = dag.test(run_conf=conf)
finished = time.time()

def iso(value):
    return value.isoformat() if value is not None else None

with create_session() as session:
    dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run.run_id).one()
    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id).all()
    result = {
        "run_id": dr.run_id, "state": str(dr.state), "conf": dr.conf,
        "start_date": iso(dr.start_date), "end_date": iso(dr.end_date),
        "process_seconds": finished - started,
        "tasks": {ti.task_id: {"state": str(ti.state), "try_number": ti.try_number, "start_date": iso(ti.start_date),
                               "end_date": iso(ti.end_date), "duration": ti.duration} for ti in tis},
    }
    # a mapped task has one instance per map index: its state is the worst of them, and its indexes are listed
    for ti in sorted(tis, key=lambda ti: ti.map_index):
        if ti.map_index >= 0:
            task = result["tasks"][ti.task_id]
            task.setdefault("map_indexes", []).append(ti.map_index)
            if str(ti.state) != "success":
                task["state"] = str(ti.state)
print("LEADRE_DAG_TEST " + json.dumps(result), flush=True)
"""


def run_dag_test(home: Path | str, dags_folder: Path | str, conf: Mapping[str, Any] | None = None, *,
                 env: Mapping[str, str] | None = None, timeout: float = 1800, python: str | None = None,
                 log_file: Path | None = None) -> dict[str, Any]:
    """`airflow db migrate` then one `dag.test(run_conf=conf)` in a child process; returns the run's summary.

    The child's output goes to `log_file` (default: <home>/dag_test.log); a failure raises with its tail.
    """
    import subprocess

    python = python or sys.executable
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    log_file = log_file or home / "dag_test.log"
    full_env = {**isolated_airflow_env(home, dags_folder), **(env or {})}
    airflow = str(Path(python).with_name("airflow"))
    with log_file.open("w", encoding="utf-8") as out:
        migrate = subprocess.run([airflow, "db", "migrate"], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=600)
        if migrate.returncode:
            raise RuntimeError(f"airflow db migrate failed:\n{_tail(log_file)}")
        child = subprocess.run([python, "-c", DAG_TEST_SCRIPT, str(dags_folder), DAG_ID, json.dumps(conf or {})],
                               env=full_env, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout)
        out.write(child.stdout)
    lines = [line for line in child.stdout.splitlines() if line.startswith(DAG_TEST_MARK)]
    if child.returncode or not lines:
        raise RuntimeError(f"dag.test exited {child.returncode}:\n{_tail(log_file)}")
    return json.loads(lines[-1][len(DAG_TEST_MARK):])


def _tail(path: Path, chars: int = 8000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-chars:]
