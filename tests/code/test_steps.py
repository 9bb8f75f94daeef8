"""The step table (leadre/steps.py) is what every runner reads: dvc.yaml agrees with it, and a new row reaches the
CLI, the DAG, the pods and the timeouts without touching them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from leadre import steps
from leadre.steps import STEPS, Step
from tests.conftest import REPO, write_params

DUMMY_MODULE = '''
def run_dummy(params):
    return {"seed": params.world.seed}
'''
DUMMY = Step("dummy", "dummy_step:run_dummy", ("dummy",), "A throwaway step that says the world's seed.",
             params=("world",), outputs=("${data.validated_dir}/dummy.json",), timeout_minutes=7)


def _paths(entries: list) -> set[str]:
    """dvc.yaml's list entries are a path or {path: options}."""
    return {next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries or []}


def test_dvc_yaml_agrees_with_the_step_table():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for step in STEPS.values():
        if not step.in_dvc:
            assert step.name not in stages, step.name
            continue
        stage = stages[step.name]
        assert stage["cmd"] == f"leadre {step.command_line}", step.name
        assert _paths(stage.get("deps")) == set(step.inputs), step.name
        assert set(stage.get("params") or ()) == set(step.params), step.name
        outputs = _paths(stage.get("outs")) | _paths(stage.get("metrics")) | _paths(stage.get("plots"))
        assert outputs == set(step.outputs), step.name


def test_every_params_section_a_step_names_exists():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for step in STEPS.values():
        for dotted in step.params + tuple(k for t in step.inputs + step.outputs for k in steps._REFERENCE.findall(t)):
            node = raw
            for key in dotted.split("."):
                assert isinstance(node, dict) and key in node, f"{step.name}: {dotted}"
                node = node[key]


def test_timeouts_default_to_the_table_and_params_override_them(tmp_path):
    params = write_params(tmp_path, {"orchestration.execution_timeout_minutes": {"sft": 30}})
    timeouts = params.orchestration.execution_timeout_minutes
    assert timeouts["sft"] == 30 and timeouts["dpo"] == STEPS["dpo"].timeout_minutes
    assert set(timeouts) == set(STEPS)


def test_a_new_row_reaches_the_cli_the_pods_and_the_timeouts(tmp_path, monkeypatch):
    from leadre import cli
    from leadre.orchestration import pods

    (tmp_path / "dummy_step.py").write_text(DUMMY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(STEPS, "dummy", DUMMY)
    params = write_params(tmp_path)
    result = CliRunner().invoke(cli.build_app(), ["--params", str(tmp_path / "params.yaml"), "dummy"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.split(": ", 1)[1]) == {"seed": params.world.seed}
    helped = CliRunner().invoke(cli.build_app(), ["dummy", "--help"])
    assert "throwaway step" in helped.stdout
    assert pods.step_arguments("dummy") == ["--params", "/workspace/params.yaml", "dummy"]
    assert "dummy" not in pods.KubernetesRunnerSettings().gpu_steps
    assert params.orchestration.timeout("dummy").total_seconds() == 7 * 60


_DAG_WITH_DUMMY = r"""
import json, sys
from leadre.steps import STEPS, Step
STEPS["dummy"] = Step("dummy", "dummy_step:run_dummy", ("dummy",), "A throwaway step.", timeout_minutes=7)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
dag = bag.dags["leadre_retrain"]
print("DAG " + json.dumps({"errors": {str(k): v for k, v in bag.import_errors.items()},
                           "order": [t.task_id for t in dag.topological_sort()],
                           "timeout": dag.get_task("dummy").execution_timeout.total_seconds(),
                           "doc": dag.get_task("dummy").doc_md}))
"""


@pytest.mark.parametrize("runner", ["local", "kubernetes"])
def test_a_new_row_becomes_a_dag_task_after_the_others(tmp_path, runner):
    from tests.airflow_harness import isolated_airflow_env

    env = isolated_airflow_env(tmp_path / "airflow", REPO / "dags", LEADRE_RUNNER=runner,
                               LEADRE_PARAMS=str(REPO / "params.yaml"))
    result = subprocess.run([sys.executable, "-c", _DAG_WITH_DUMMY, str(REPO / "dags")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    dag = json.loads([line for line in result.stdout.splitlines() if line.startswith("DAG ")][-1][4:])
    assert dag["errors"] == {}
    # a shardable step is its plan, its mapped shards and its merge (named after the step)
    tasks = [t for name, step in STEPS.items()
             for t in ((f"{name}_shards", f"{name}_shard", name) if step.shardable else (name,))]
    assert dag["order"] == [*tasks, "dummy"]
    assert dag["timeout"] == 7 * 60 and dag["doc"] == "A throwaway step."


def test_run_step_names_the_known_steps():
    with pytest.raises(KeyError, match="unknown step 'trian'; steps are validate, sids"):
        steps.run_step("trian", Path("params.yaml"))
