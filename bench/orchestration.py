"""`python -m bench.orchestration`: what Airflow adds to a retrain, on the tiny world with tiny training settings.

Runs the DAG (dags/leadre_retrain.py, local runner) once with `dag.test()` in a child process with its own
AIRFLOW_HOME (SQLite metadata DB), then reads the DAG run and its task instances from the metadata DB and compares
the run's wall time (start to end of the DAG run) with the sum of its task instances' durations (each task's
start to end, i.e. the step itself plus the task's own start-up). The gap is scheduling between tasks; the goal is
wall ≤ 1.15 × sum. Airflow's fixed start-up (importing Airflow, reading the DAG folder) is reported apart: it is
paid once per process, not per task. Also timed, in a process of its own: parsing the DAG folder with a DagBag, which
the dag processor repeats every `[dag_processor] min_file_process_interval` (30 s by default). The goal is ≤ 2 s;
tests check only that parsing imports no heavy module.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench import save_results
from leadre.steps import STEPS

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.15
PARSE_GOAL_SECONDS = 2.0
# Airflow itself is imported before the clock starts: what is timed is the DAG file's own cost
_PARSE = r"""
import sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(sys.argv[1])
seconds = time.perf_counter() - started
assert not bag.import_errors, bag.import_errors
print(f"PARSE {seconds}")
"""

# Tiny training (tests/conftest.py's FAST_TRAINING in the params file) plus, through the trigger form, a gate loose
# enough that promote runs too: the whole chain is timed.
CONF = {
    "sft_epochs": 1,
    "dpo_epochs": 1,
    "overrides": {
        "gate.min_relative_lift": -1.0,
        "gate.guardrails": {},
        "evaluate.max_users": 100,
        "evaluate.value_weights": [0.0, 1.0],
        "evaluate.diversity_penalties": [0.0],
        "evaluate.baselines.sasrec.epochs": 2,
    },
}


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def prepare(root: Path) -> Path:
    """A params.yaml at the tiny scale with tiny training, and the tiny world generated beside it."""
    from leadre.data.generate import run_generate
    from tests.conftest import FAST_TRAINING, write_params

    params = write_params(root, FAST_TRAINING)
    run_generate(params)
    return root / "params.yaml"


def dag_parse_seconds(home: Path, params_file: Path) -> float:
    from tests.airflow_harness import isolated_airflow_env

    env = isolated_airflow_env(home, REPO / "dags", LEADRE_PARAMS=str(params_file))
    done = subprocess.run([sys.executable, "-c", _PARSE, str(REPO / "dags")], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300, check=True)
    return float([line for line in done.stdout.splitlines() if line.startswith("PARSE ")][-1].split()[1])


def run(keep: bool = False, timeout: float = 1800) -> dict:
    from tests.airflow_harness import run_dag_test

    root = Path(tempfile.mkdtemp(prefix="leadre-bench-orchestration-"))
    try:
        params_file = prepare(root / "workspace")
        parse_seconds = dag_parse_seconds(root / "airflow-parse", params_file)
        started = time.perf_counter()
        result = run_dag_test(root / "airflow", REPO / "dags", CONF, timeout=timeout,
                                 env={"LEADRE_PARAMS": str(params_file), "LEADRE_RETRIES": "0"})
        total = time.perf_counter() - started
        tasks = result["tasks"]
        wall = _seconds(result["start_date"], result["end_date"])
        durations = {step: task["duration"] or 0.0 for step, task in tasks.items()}
        task_sum = sum(durations.values())
        first_start = min(t["start_date"] for t in tasks.values() if t["start_date"])
        last_end = max(t["end_date"] for t in tasks.values() if t["end_date"])
        payload = {
            "dag_run_state": result["state"],
            "task_states": {step: task["state"] for step, task in tasks.items()},
            "dag_run_wall_seconds": wall,
            "task_seconds_sum": task_sum,
            "ratio": wall / task_sum if task_sum else None,
            "first_task_to_last_task_seconds": _seconds(first_start, last_end),
            "goal_ratio": GOAL,
            "dag_parse_seconds": parse_seconds,
            "goal_dag_parse_seconds": PARSE_GOAL_SECONDS,
            "dag_test_process_seconds": result["process_seconds"],
            "airflow_fixed_seconds": result["process_seconds"] - wall,
            "with_db_migrate_seconds": total,
            "tasks": {step: {"seconds": durations[step], "state": tasks[step]["state"]} for step in STEPS
                      if step in tasks},
            "conf": CONF,
            "workspace": str(root) if keep else None,
        }
        return payload
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def report(payload: dict) -> str:
    lines = [f"{'task':<10} {'state':<16} {'seconds':>9}"]
    for step, task in payload["tasks"].items():
        lines.append(f"{step:<10} {task['state']:<16} {task['seconds']:>9.2f}")
    ratio = payload["ratio"]
    verdict = "ok" if ratio is not None and ratio <= GOAL else "over the goal"
    lines += [
        "",
        f"{'sum of task durations':<36} {payload['task_seconds_sum']:>9.2f} s",
        f"{'DAG run wall time':<36} {payload['dag_run_wall_seconds']:>9.2f} s",
        f"{'ratio (wall / sum), goal <= ' + str(GOAL):<36} {ratio:>9.3f} x  {verdict}",
        f"{'first task start to last task end':<36} {payload['first_task_to_last_task_seconds']:>9.2f} s",
        f"{'dag.test process, all of it':<36} {payload['dag_test_process_seconds']:>9.2f} s",
        f"{'  of which Airflow start-up and exit':<36} {payload['airflow_fixed_seconds']:>9.2f} s",
        f"{'with airflow db migrate':<36} {payload['with_db_migrate_seconds']:>9.2f} s",
        f"{'DagBag parse, goal <= ' + str(PARSE_GOAL_SECONDS) + ' s':<36} {payload['dag_parse_seconds']:>9.2f} s  "
        + ("ok" if payload["dag_parse_seconds"] <= PARSE_GOAL_SECONDS else "over the goal"),
        f"DAG run state: {payload['dag_run_state']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the workspace and AIRFLOW_HOME (logs, DB)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the dag.test run is stopped")
    args = parser.parse_args(argv)
    payload = run(keep=args.keep, timeout=args.timeout)
    print(report(payload))
    path = save_results("orchestration", payload)
    print(f"raw figures: {path}")
    if payload["workspace"]:
        print(f"workspace kept: {payload['workspace']}")
    print(json.dumps({"ratio": payload["ratio"]}))
    return 0 if payload["dag_run_state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
