"""The Airflow retrain DAG (dags/leadre_retrain.py), checked three ways:

- integrity, fast: the DAG file parses without import errors in a fraction of a second and without loading any
  heavy library; the graph is exactly validate → sids → prompts → sft → dpo → evaluate → gate → promote → nearline;
  every task retries with exponential back-off, has a timeout and the failure callback; the trigger form rejects
  bad values; the Kubernetes runner builds schema-valid pods, with a GPU exactly for sft, dpo and nearline;
- end to end with `dag.test()` on the tiny world and tiny training settings: every task succeeds and the MLflow
  registry ends with a `champion`;
- through Airflow's real REST API: `airflow standalone` (API server, scheduler, DAG processor, LocalExecutor) on a
  loopback port, trigger with conf, poll until the run succeeds.

Airflow reads its configuration once per process, so everything that imports Airflow runs in a child process with
its own AIRFLOW_HOME (SQLite metadata DB): nothing leaks into this process or between tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from leadre.config import ConfigError, load_params
from leadre.orchestration import dag_support as ds
from leadre.orchestration import pods
from leadre.steps import STEPS
from tests.airflow_harness import isolated_airflow_env, run_dag_test
from tests.conftest import prepared_workspace

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "leadre_retrain"
CHAIN = ("validate", "sids", "prompts", "sft", "dpo", "evaluate", "gate", "promote", "nearline")
SHARDED = ("sids", "prompts", "nearline")  # plan (<step>_shards) → mapped <step>_shard → merge (<step>)
TASKS = tuple(t for s in CHAIN for t in ((f"{s}_shards", f"{s}_shard", s) if s in SHARDED else (s,)))
# what the steps run, in order, in a run with one shard each: a sharded step's shard, then its merge
CALLS = tuple(c for s in CHAIN for c in ((f"{s} 0/1", f"{s} merge 1") if s in SHARDED else (s,)))
GPU = "nvidia.com/gpu"
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "mlflow", "great_expectations", "sentence_transformers",
         "sklearn")
K8S_VERSION = "1.37.0"  # as tests/deploy: the newest schemas kubernetes-validate 1.37.0 bundles

# What a tiny retrain changes through the trigger form, on top of the tiny params file (FAST_TRAINING). The gate
# is loosened so that a few seconds of training on 400 users is promoted: the run must end with a champion.
TINY_CONF: dict[str, Any] = {
    "sft_epochs": 1,
    "dpo_epochs": 1,
    "lora": "off",
    "overrides": {
        "gate.min_relative_lift": -1.0,   # any candidate that recommends only live ads passes
        "gate.guardrails": {},
        "evaluate.max_users": 100,
        "evaluate.value_weights": [0.0, 1.0],
        "evaluate.diversity_penalties": [0.0],
        "evaluate.baselines.sasrec.epochs": 2,
    },
}


def registered_model_name(params_file: Path) -> str:
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    return (raw.get("registry") or {}).get("model_name") or ds.DEFAULT_MODEL_NAME


def champion_version(params_file: Path) -> Any:
    """The model version the `champion` alias points at in the params' MLflow registry (None if unset)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from leadre.config import load_params
    from leadre.tracking import tracking_uri

    uri = tracking_uri(load_params(params_file))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # the registry URI would default to the process's
    try:
        return client.get_model_version_by_alias(registered_model_name(params_file), "champion")
    except MlflowException:
        return None


def retrain_runs(params_file: Path, retrain_id: str) -> dict[str, Any]:
    """The MLflow runs of one retrain by step (tag leadre.step), found by its retrain id tag."""
    from mlflow.tracking import MlflowClient

    from leadre.config import load_params
    from leadre.tracking import tracking_uri

    params = load_params(params_file)
    client = MlflowClient(tracking_uri=tracking_uri(params))
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.`leadre.retrain_id` = '{retrain_id}'")
    return {run.data.tags.get("leadre.step"): run for run in runs}


# ----------------------------------------------------------------------------------------------- integrity

# Child process: parse the DAG folder with a DagBag and describe the DAG as JSON.
_INSPECT = r"""
import json, os, sys
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
airflow_loaded = set(sys.modules)
bag = DagBag(sys.argv[1])
loaded_by_dag = sorted(set(sys.modules) - airflow_loaded)
out = {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dags),
       "modules": sorted(sys.modules), "loaded_by_dag": loaded_by_dag}
dag = bag.dags.get("leadre_retrain")
if dag is not None:
    order = [t.task_id for t in dag.topological_sort()]
    out.update({
        "schedule": str(dag.schedule), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md and len(dag.doc_md) > 200), "order": order,
        "has_dag_failure_callback": bool(dag.on_failure_callback),
        "tasks": {t.task_id: {
            "upstream": sorted(t.upstream_task_ids), "downstream": sorted(t.downstream_task_ids),
            "retries": t.retries, "backoff": t.retry_exponential_backoff,
            "retry_delay": t.retry_delay.total_seconds(),
            "max_retry_delay": t.max_retry_delay.total_seconds() if t.max_retry_delay else None,
            "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
            "failure_callbacks": [getattr(c, "__qualname__", repr(c)) for c in (
                t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback])
                if c],
            "trigger_rule": str(t.trigger_rule.value if hasattr(t.trigger_rule, "value") else t.trigger_rule),
            "task_type": t.task_type, "ignore_downstream_trigger_rules": getattr(
                t, "ignore_downstream_trigger_rules", None),
            "do_xcom_push": t.partial_kwargs.get("do_xcom_push", True) if hasattr(t, "partial_kwargs")
            else t.do_xcom_push,
        } for t in dag.tasks},
    })
    # the trigger form: each case is resolved by the Param the UI and the REST API validate with
    cases = json.loads(sys.argv[2])
    verdicts = []
    for name, value in cases:
        try:
            dag.params.get_param(name).resolve(value)
            verdicts.append("ok")
        except Exception as err:
            verdicts.append(type(err).__name__)
    out["param_names"] = sorted(dag.params.keys())
    out["param_verdicts"] = verdicts
    # serialisable for the scheduler (what the DAG processor stores)
    from airflow.serialization.serialized_objects import DagSerialization
    DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    out["serialized"] = True
    if os.environ.get("LEADRE_RUNNER") == "kubernetes":
        from kubernetes.client import ApiClient
        form = json.loads(sys.argv[3])
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from leadre.orchestration import dag_support as ds, pods as leadre_pods

        class PlanTI:  # what a merge pod's hook reads: its plan planned 3 shards
            def xcom_pull(self, task_ids):
                return [[], [], []]

        pods = {}
        for t in dag.tasks:
            if t.task_type != "KubernetesPodOperator" or not hasattr(t, "build_pod_request_obj"):
                continue  # the shard plans run in the worker; the mapped shard pods are rendered below
            t.config_file = os.environ["KUBECONFIG"]
            t.in_cluster = False
            t._pre_execute_hook({"task": t, "params": form, "ti": PlanTI()})
            t._pre_execute_hook({"task": t, "params": form, "ti": PlanTI()})  # a second try: same arguments
            pods[t.task_id] = ApiClient().sanitize_for_serialization(t.build_pod_request_obj())
        # a mapped shard pod: the partial's arguments plus one shard's from the plan
        settings = ds.load_settings(os.environ["LEADRE_PARAMS"])
        for step in ("sids", "prompts", "nearline"):
            arguments = ds.pod_arguments(leadre_pods.shard_arguments(step, 3)[1], ds.overrides_from_params(form))
            t = KubernetesPodOperator(task_id=ds.shard_task_id(step), config_file=os.environ["KUBECONFIG"],
                                      in_cluster=False, arguments=arguments, **ds.shard_pod_kwargs(step, settings))
            pods[t.task_id] = ApiClient().sanitize_for_serialization(t.build_pod_request_obj())
        out["pods"] = pods
        # the gate pod's decision (its /airflow/xcom/return.json) through the gate's post-execute hook
        gate = dag.get_task("gate")

        class FakeTI:
            map_index = -1
            def __init__(self):
                self.pushed = []
            def xcom_push(self, key, value):
                self.pushed.append([key, value])

        outcomes = []
        for decision in ({"passed": True}, {"passed": False, "reasons": ["ndcg@10 too low"]}, None):
            ti = FakeTI()
            try:
                gate._post_execute_hook({"ti": ti, "task": gate}, decision)
                outcomes.append({"raised": None, "pushed": ti.pushed})
            except Exception as err:
                outcomes.append({"raised": type(err).__name__, "skipped": sorted(getattr(err, "tasks", None) or []),
                                 "pushed": ti.pushed})
        out["gate_outcomes"] = outcomes
print("INSPECT " + json.dumps(out))
"""

PARAM_CASES: list[tuple[str, Any, bool]] = [  # (field, value, accepted?)
    ("sft_epochs", 3, True), ("sft_epochs", None, True), ("sft_epochs", -1, False), ("sft_epochs", 0, False),
    ("sft_epochs", "three", False),
    ("learning_rate", 2e-4, True), ("learning_rate", 0, False), ("learning_rate", 5, False),
    ("base_model", "builtin:tiny", True), ("base_model", "/models/qwen2.5-0.5b", True), ("base_model", 123, False),
    ("base_model", "", False), ("base_model", "two words", False),
    ("lora", "on", True), ("lora", "auto", True), ("lora", "maybe", False), ("lora", True, False),
    ("lora_r", 8, True), ("lora_r", 0, False),
    ("max_train_examples", 0, True), ("max_train_examples", 1.5, False),
    ("dpo_beta", 0.1, True), ("dpo_beta", -0.1, False),
    ("snapshot_time", "2026-11-01T00:00:00+00:00", True), ("snapshot_time", "2026-11-01T00:00:00.000Z", True),
    ("snapshot_time", "2026-11-01", False), ("snapshot_time", "2026-11-01T00:00:00", False),
    ("prompts_shards", 3, True), ("prompts_shards", 0, False), ("nearline_shards", 1.5, False),
    ("overrides", {"sft.batch_size": 8}, True), ("overrides", {"not dotted": 1}, False), ("overrides", [1], False),
]
FORM_IN_PODS = {"base_model": "/models/qwen", "learning_rate": 0.0002, "lora": "on", "overrides": {"dpo.beta": 0.2}}

PLACEHOLDER_KUBECONFIG = pods._PLACEHOLDER_KUBECONFIG


def inspect_dag(home: Path, runner: str, params_file: Path = REPO / "params.yaml", **extra: str) -> dict[str, Any]:
    env = isolated_airflow_env(home, DAGS, LEADRE_RUNNER=runner, LEADRE_PARAMS=str(params_file), **extra)
    env = {k: v for k, v in env.items() if not k.startswith("LEADRE_K8S_")}  # pods.py's defaults, as in k8s/base
    if runner == "kubernetes":
        kubeconfig = home / "kubeconfig"
        home.mkdir(parents=True, exist_ok=True)
        kubeconfig.write_text(PLACEHOLDER_KUBECONFIG, encoding="utf-8")
        env["KUBECONFIG"] = str(kubeconfig)
    cases = json.dumps([[name, value] for name, value, _ in PARAM_CASES])
    result = subprocess.run([sys.executable, "-c", _INSPECT, str(DAGS), cases, json.dumps(FORM_IN_PODS)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    line = [line for line in result.stdout.splitlines() if line.startswith("INSPECT ")][-1]
    return json.loads(line[len("INSPECT "):])


@pytest.fixture(scope="module")
def local_dag(tmp_path_factory) -> dict[str, Any]:
    return inspect_dag(tmp_path_factory.mktemp("airflow_local"), "local")


@pytest.fixture(scope="module")
def k8s_dag(tmp_path_factory) -> dict[str, Any]:
    return inspect_dag(tmp_path_factory.mktemp("airflow_k8s"), "kubernetes")


def test_dag_file_imports_without_errors_and_without_heavy_modules(local_dag):
    assert local_dag["import_errors"] == {}
    assert local_dag["dag_ids"] == [DAG_ID]
    # how long parsing takes is a benchmark (`python -m bench.orchestration`), not a unit check
    heavy = sorted(m for m in local_dag["modules"] if m.split(".")[0] in HEAVY)
    assert heavy == [], f"parsing the DAG imported {heavy}"
    # the local runner does not load the Kubernetes provider's operator or the Kubernetes client
    loaded = local_dag["loaded_by_dag"]
    assert not [m for m in loaded if m.startswith(("kubernetes", "airflow.providers.cncf.kubernetes.operators"))]


def test_task_order_is_exactly_the_retrain_chain(local_dag, k8s_dag):
    for described in (local_dag, k8s_dag):
        tasks = described["tasks"]
        assert tuple(described["order"]) == TASKS
        assert set(tasks) == set(TASKS)
        first = {s: f"{s}_shards" if s in SHARDED else s for s in CHAIN}
        for before, after in zip(CHAIN, CHAIN[1:]):
            assert tasks[before]["downstream"] == [first[after]]
            assert tasks[first[after]]["upstream"] == [before]
        for step in SHARDED:  # the plan feeds the mapped shards and the merge; the merge waits for every shard
            assert tasks[f"{step}_shards"]["downstream"] == sorted([step, f"{step}_shard"])
            assert tasks[f"{step}_shard"]["upstream"] == [f"{step}_shards"]
            assert tasks[step]["upstream"] == sorted([f"{step}_shards", f"{step}_shard"])
        assert tasks["validate"]["upstream"] == [] and tasks["nearline"]["downstream"] == []
        # the gate's "no" skips promote only; near-line still refreshes with the current champion
        assert tasks["nearline_shards"]["trigger_rule"] == "none_failed"
        assert {t["trigger_rule"] for name, t in tasks.items() if name != "nearline_shards"} == {"all_success"}


def test_dag_schedule_and_run_settings(local_dag):
    # no schedule by default: unpausing (the trigger form's "Unpause on trigger") starts no retrain of its own ahead
    # of the user's (max_active_runs is 1); a schedule, when set, never catches up
    assert local_dag["schedule"] == "None"
    assert local_dag["catchup"] is False and local_dag["max_active_runs"] == 1
    assert {"leadre", "retrain", "local"} <= set(local_dag["tags"])
    assert local_dag["doc_md"] and local_dag["serialized"]


def test_every_task_retries_with_backoff_times_out_and_reports_failures(local_dag, k8s_dag):
    for described in (local_dag, k8s_dag):
        for step, task in described["tasks"].items():
            assert task["retries"] > 0, step
            assert task["backoff"] >= 2, step  # a multiplier: 5, 10, 20 min ...
            assert task["max_retry_delay"] and task["max_retry_delay"] >= task["retry_delay"], step
            assert task["timeout"] and task["timeout"] > 0, step
            assert task["failure_callbacks"] == ["on_step_failure"], step
        timeouts = {step: task["timeout"] for step, task in described["tasks"].items()}
        assert timeouts["sft"] > timeouts["validate"] and timeouts["dpo"] > timeouts["gate"]


def test_gate_short_circuits_promote_only(local_dag):
    gate = local_dag["tasks"]["gate"]
    assert gate["task_type"] == "_ShortCircuitDecoratedOperator"
    assert gate["ignore_downstream_trigger_rules"] is False


def test_trigger_form_rejects_bad_values(local_dag):
    assert set(ds.FORM) | {ds.OVERRIDES_FIELD} == set(local_dag["param_names"])
    for (name, value, accepted), verdict in zip(PARAM_CASES, local_dag["param_verdicts"]):
        assert (verdict == "ok") == accepted, f"{name}={value!r}: {verdict}"


def test_kubernetes_runner_builds_schema_valid_pods_with_gpus_only_for_training_and_nearline(k8s_dag):
    validator = pytest.importorskip("kubernetes_validate")
    assert k8s_dag["import_errors"] == {}
    # every step is a pod; only the shard plans (how many pods to map) run in the worker
    assert {name for name, t in k8s_dag["tasks"].items() if t["task_type"] != "KubernetesPodOperator"} == {
        f"{s}_shards" for s in SHARDED}
    assert "kubernetes" in k8s_dag["tags"]
    rendered = k8s_dag["pods"]
    assert set(rendered) == set(CHAIN) | {f"{s}_shard" for s in SHARDED}
    for task_id, pod in rendered.items():
        step, shard = task_id.removesuffix("_shard"), task_id.endswith("_shard")
        validator.validate(pod, K8S_VERSION, strict=True)
        spec = pod["spec"]
        main = next(c for c in spec["containers"] if c["name"] == "base")
        limits = main["resources"]["limits"]
        if step in {"sft", "dpo", "nearline"}:  # a near-line shard pod too
            assert limits[GPU] == "1", step
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        else:
            assert GPU not in limits, step
            assert not spec.get("nodeSelector"), step
        # the form's values reach the pod as global `-S` options, before the subcommand
        args = main["args"]
        assert args[:2] == ["--params", "/workspace/params.yaml"], step
        sets = dict(args[i + 1].split("=", 1) for i in range(2, len(args) - 1) if args[i] == "-S")
        assert {key: yaml.safe_load(value) for key, value in sets.items()} == {
            "model.base_model": "/models/qwen", "sft.learning_rate": 0.0002, "sft.lora.enabled": True,
            "dpo.lora.enabled": True, "dpo.beta": 0.2}, step
        tail = args[2 + 2 * len(sets):]
        expected = [*STEPS[step].command, *(ds.GATE_POD_ARGS if step == "gate" else ())]
        if step in SHARDED:  # shard 1 of the 3 the plan planned, or the merge of the 3
            expected += ["--shard", "1/3"] if shard else ["--merge", "3"]
        assert tail == expected, task_id
        env = {e["name"]: e.get("value") for e in main.get("env") or []}
        assert env["LEADRE_RETRAIN_ID"] == "{{ run_id }}"
    # only the gate returns XCom: its decision, from /airflow/xcom/return.json (an xcom sidecar reads it)
    # (and the shard plans, which run in the worker)
    assert sorted(s for s, t in k8s_dag["tasks"].items() if t["do_xcom_push"]) == sorted(
        ["gate", *(f"{s}_shards" for s in SHARDED)])
    gate_containers = {c["name"] for c in rendered["gate"]["spec"]["containers"]}
    assert "airflow-xcom-sidecar" in gate_containers


def test_kubernetes_gate_decision_skips_promote_only_when_not_passed(k8s_dag):
    passed, held_back, missing = k8s_dag["gate_outcomes"]
    assert passed == {"raised": None, "pushed": []}  # Airflow pushes the decision as the gate's XCom itself
    assert held_back["raised"] == "DownstreamTasksSkipped" and held_back["skipped"] == ["promote"]
    assert ["return_value", {"passed": False, "reasons": ["ndcg@10 too low"]}] in held_back["pushed"]
    assert missing["raised"] == "ValueError"  # no decision written (a gate without --xcom): fail, never promote


# Child process: the DAG's own behaviour, with stand-in step functions (only `leadre.steps.step_function` is
# replaced, in the child): three dag.test() runs where the gate passes, where it does not, and where SFT fails.
_SEMANTICS = r"""
import json, os, sys
import leadre.steps as steps
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

mode = {"passed": True, "fail": None}
seen = []

def stand_in(name, merge=False):
    def run(params, shards=None, shard=None):
        call = f"{name} merge {shards}" if merge else f"{name} {shard}" if shard else name
        seen.append({"step": call, "retrain_id": os.environ.get("LEADRE_RETRAIN_ID"), "sft_epochs": params.sft.epochs,
                     "lora": params.dpo.lora.enabled})
        if mode["fail"] == name:
            raise RuntimeError(f"stand-in {name} broke")
        return {"passed": mode["passed"], "reasons": ["stand-in"]} if name == "gate" else {"step": name}
    return run

steps.step_function = stand_in
steps.merge_function = lambda name: stand_in(name, merge=True)
dag = DagBag(sys.argv[1]).dags["leadre_retrain"]
results = []
for passed, fail in ((True, None), (False, None), (True, "sft")):
    mode.update(passed=passed, fail=fail)
    seen.clear()
    run = dag.test(run_conf={"sft_epochs": 7, "lora": "on"})
    with create_session() as session:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag.dag_id, DagRun.run_id == run.run_id).one()
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag.dag_id,
                                                 TaskInstance.run_id == run.run_id).all()
        xcoms = session.query(XComModel).filter(XComModel.dag_id == dag.dag_id, XComModel.run_id == run.run_id,
                                                XComModel.task_id == "gate").all()
        results.append({"run_id": dr.run_id, "state": str(dr.state), "seen": list(seen),
                        "tasks": {ti.task_id: str(ti.state) for ti in tis},
                        "gate_xcom": sorted(x.key for x in xcoms)})
print("SEMANTICS " + json.dumps(results), flush=True)
"""


@pytest.fixture(scope="module")
def stand_in_runs(tmp_path_factory) -> tuple[list[dict[str, Any]], str]:
    home = tmp_path_factory.mktemp("airflow_semantics")
    env = isolated_airflow_env(home, DAGS, LEADRE_PARAMS=str(REPO / "params.yaml"), LEADRE_RETRIES="0")
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    result = subprocess.run([sys.executable, "-c", _SEMANTICS, str(DAGS)], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    line = [line for line in result.stdout.splitlines() if line.startswith("SEMANTICS ")][-1]
    return json.loads(line[len("SEMANTICS "):]), output


def test_every_task_runs_its_step_with_the_form_overrides_and_the_run_id(stand_in_runs):
    runs, _ = stand_in_runs
    passed = runs[0]
    assert passed["state"] == "success" and passed["tasks"] == dict.fromkeys(TASKS, "success")
    assert [call["step"] for call in passed["seen"]] == list(CALLS)
    # every step saw the form's values and the DAG run id (the MLflow parent run of the retrain)
    assert {(c["sft_epochs"], c["lora"], c["retrain_id"]) for c in passed["seen"]} == {(7, True, passed["run_id"])}
    assert "summary" in passed["gate_xcom"]


def test_a_gate_that_does_not_pass_skips_promote_but_refreshes_nearline(stand_in_runs):
    runs, _ = stand_in_runs
    held_back = runs[1]
    assert held_back["state"] == "success"
    assert held_back["tasks"] == {**dict.fromkeys(TASKS, "success"), "promote": "skipped"}
    assert [call["step"] for call in held_back["seen"]] == [s for s in CALLS if s != "promote"]
    assert "summary" in held_back["gate_xcom"]  # the decision stays readable


def test_a_failed_step_stops_the_run_and_the_callback_says_where_to_look(stand_in_runs):
    runs, output = stand_in_runs
    failed = runs[2]
    assert failed["state"] == "failed"
    assert failed["tasks"]["sft"] == "failed"
    assert {failed["tasks"][s] for s in TASKS[TASKS.index("sft") + 1:]} == {"upstream_failed"}  # nearline too
    assert "dpo" not in [call["step"] for call in failed["seen"]]
    assert f"LEADRE retrain step 'sft' failed (try 1 of 1, DAG run {failed['run_id']})" in output
    assert "stand-in sft broke" in output and "--resume" in output and "sft_metrics.json" in output


# ------------------------------------------------------------------------------------------- pure helpers

def test_form_values_become_dotted_overrides():
    assert ds.overrides_from_params({name: None for name in ds.FORM} | {"overrides": {}}) == {}
    overrides = ds.overrides_from_params({
        "base_model": "builtin:tiny", "sft_epochs": 2, "learning_rate": 0.01, "lora": "off", "lora_r": 8,
        "snapshot_time": "2026-10-01T00:00:00+00:00", "source_dir": "data/imported",
        "overrides": {"sft.batch_size": 8}})
    assert overrides == {
        "model.base_model": "builtin:tiny", "sft.epochs": 2, "sft.learning_rate": 0.01,
        "sft.lora.enabled": False, "dpo.lora.enabled": False, "sft.lora.r": 8, "dpo.lora.r": 8,
        "data.snapshot_time": "2026-10-01T00:00:00+00:00", "data.source_dir": "data/imported",
        "sft.batch_size": 8}
    # every form field names params keys that exist
    from leadre.config import load_params

    for key in {k for spec in ds.FORM.values() for k in spec.keys}:
        node: Any = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    load_params(REPO / "params.yaml", overrides)  # types accepted by leadre.config


def test_cli_set_args_parse_back_through_the_real_cli(tmp_path):
    from leadre import cli
    from leadre.config import load_params

    overrides = {"model.base_model": "builtin:tiny", "sft.learning_rate": 1e-05, "sft.lora.enabled": "auto",
                 "dpo.lora.enabled": True, "sft.epochs": 2, "data.snapshot_time": "2026-10-01T00:00:00+00:00",
                 "data.source_dir": "data/imported", "gate.guardrails": {"hr@10": 0.05},
                 "evaluate.ks": [1, 10], "model.tiny": {"vocab_size": 600, "hidden_size": 32, "layers": 2,
                                                       "heads": 2, "kv_heads": 1, "intermediate_size": 64,
                                                       "max_position_embeddings": 1024,
                                                       "tokenizer_corpus_rows": 2000}}
    args = ds.cli_set_args(overrides)
    assert args[::2] == ["-S"] * len(overrides)
    cli.main(params=REPO / "params.yaml", set_=args[1::2], verbose=False)
    assert cli.current_params() == load_params(REPO / "params.yaml", overrides)
    assert ds.pod_arguments(["--params", "/p.yaml", "gate", "--xcom", "/x"], {"sft.epochs": 1}) == [
        "--params", "/p.yaml", "-S", "sft.epochs=1", "gate", "--xcom", "/x"]


def test_settings_from_params_and_environment(tmp_path):
    default = ds.load_settings(REPO / "params.yaml", environ={})
    assert default.runner == "local" and default.retries > 0 and default.schedule is None
    assert set(default.execution_timeout_minutes) == set(CHAIN)
    params = tmp_path / "params.yaml"
    base = yaml.safe_load((REPO / "params.yaml").read_text())["orchestration"]
    params.write_text(yaml.safe_dump({"orchestration": {
        **base, "runner": "kubernetes", "schedule": None, "retries": 4,
        "execution_timeout_minutes": {**base["execution_timeout_minutes"], "sft": 30}}}))
    settings = ds.load_settings(params, environ={})
    assert (settings.runner, settings.schedule, settings.retries) == ("kubernetes", None, 4)
    assert settings.timeout("sft").total_seconds() == 1800 and settings.timeout("dpo").total_seconds() > 1800
    from_env = ds.load_settings(params, environ={"LEADRE_RUNNER": "local", "LEADRE_RETRIES": "0",
                                                 "LEADRE_SCHEDULE": "none"})
    assert (from_env.runner, from_env.retries, from_env.schedule) == ("local", 0, None)
    assert ds.load_settings(params, environ={"LEADRE_SCHEDULE": "0 3 * * 1"}).schedule == "0 3 * * 1"
    for bad in ({"runner": "docker"}, {"execution_timeout_minutes": {"train": 5}}, {"retries": -1}, {"typo": 1}):
        params.write_text(yaml.safe_dump({"orchestration": {**base, **bad}}))
        with pytest.raises(ValueError, match="orchestration"):
            ds.load_settings(params, environ={})


def test_broken_params_fail_the_dag_file_with_one_line_naming_the_file_and_key(tmp_path):
    """The DAG reads params.yaml through leadre.config: a typo or broken YAML is an error naming it, never {}."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**base, "orchestration": {**base["orchestration"], "schedul": "@weekly"}}))
    with pytest.raises(ConfigError) as raised:
        ds.load_settings(params, environ={})
    assert str(raised.value) == (f"{params}: unknown key 'orchestration.schedul' — did you mean "
                                 "'orchestration.schedule'?")
    params.write_text("orchestration: {runner: local\n  retries: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as raised:
        ds.load_settings(params, environ={})
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="not valid YAML"):
        ds.form_params(params)
    # in Airflow: the DAG does not load, and its import error says why
    described = inspect_dag(tmp_path / "airflow", "local", params)
    assert described["dag_ids"] == []
    assert any(f"{params}: not valid YAML" in error for error in described["import_errors"].values())


def test_a_scheduled_dag_never_catches_up(tmp_path):
    described = inspect_dag(tmp_path / "airflow", "local", LEADRE_SCHEDULE="@weekly")
    assert described["schedule"] == "@weekly" and described["catchup"] is False


def test_library_logs_inside_a_task_are_quiet_and_at_their_own_level(tmp_path):
    """What a validate or train task's log showed: 214 lines of GX "Skipping registering function", and MLflow's
    INFO lines on stderr, which Airflow files as ERROR. The task runner's settings, in a fresh process as a task's."""
    script = tmp_path / "task.py"
    script.write_text(
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout)  # the task's own handler, at INFO\n"
        "if sys.argv[1] == 'task':\n"
        "    from leadre.orchestration.dag_support import quiet_library_logs\n"
        "    quiet_library_logs()\n"
        "import great_expectations, mlflow\n"
        "logging.getLogger('mlflow.tracking').info('View run evaluate')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    runs = {mode: subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env,
                                 cwd=REPO, timeout=300) for mode in ("bare", "task")}
    bare, task = runs["bare"], runs["task"]
    assert bare.returncode == task.returncode == 0, task.stderr[-3000:]
    # without the settings, both problems show (the test would catch their return)
    assert "Skipping registering function" in bare.stdout and "View run evaluate" in bare.stderr
    assert "Skipping registering function" not in task.stdout + task.stderr
    assert "View run evaluate" in task.stdout and "View run evaluate" not in task.stderr


def test_make_airflow_listens_on_loopback_only(tmp_path):
    """`make airflow`'s own environment, read back by Airflow's configuration: the API server's host and port."""
    # CURDIR moves the recipe's AIRFLOW_HOME (where Airflow writes its airflow.cfg) out of the checkout
    recipe = subprocess.run(["make", "-s", "-n", "-o", "install", "airflow", f"CURDIR={tmp_path}"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert recipe.rstrip().endswith("airflow standalone"), recipe
    env = isolated_airflow_env(tmp_path / "airflow", DAGS)
    query = recipe.rstrip().removesuffix("airflow standalone")
    shown = {}
    for key in ("host", "port"):
        result = subprocess.run(["bash", "-c", query + f"airflow config get-value api {key}"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        shown[key] = result.stdout.strip()
    assert shown == {"host": "127.0.0.1", "port": "8080"}


def test_failure_report_says_where_to_look(tmp_path):
    class TI:
        task_id, run_id, try_number, max_tries = "sft", "manual__2026-11-30", 2, 2
        log_url = "http://airflow/dags/leadre_retrain/runs/manual__2026-11-30/tasks/sft?try_number=2"

    report = ds.failure_report({"ti": TI(), "run_id": TI.run_id, "exception": RuntimeError("CUDA out of memory")},
                               REPO / "params.yaml")
    assert "step 'sft' failed (try 2 of 3" in report
    assert TI.log_url in report and "CUDA out of memory" in report
    assert "retrain manual__2026-11-30" in report and "leadre.retrain_id" in report
    assert str(REPO / "reports" / "sft_metrics.json") in report and "--resume" in report


# ------------------------------------------------------------------------------------------------ end to end

# The end-to-end run also fans the data steps out: 3 shards each (several chunks of users, so every prompts shard
# has some), and the test then checks the outputs equal one unsharded run's.
SHARDED_CONF: dict[str, Any] = {**TINY_CONF, "sids_shards": 3, "prompts_shards": 3, "nearline_shards": 3,
                                "overrides": {**TINY_CONF["overrides"], "prompts.users_per_chunk": 40}}


@pytest.mark.slow
def test_dag_test_runs_the_whole_retrain_on_the_tiny_world(tmp_path, prepared_data):
    workspace = tmp_path / "workspace"
    prepared_workspace(workspace, prepared_data)
    params_file = workspace / "params.yaml"
    started = time.perf_counter()
    run = run_dag_test(tmp_path / "airflow", DAGS, SHARDED_CONF, timeout=1800,
                          env={"LEADRE_PARAMS": str(params_file), "LEADRE_RETRIES": "0"})
    seconds = time.perf_counter() - started
    states = {step: task["state"] for step, task in run["tasks"].items()}
    assert states == dict.fromkeys(TASKS, "success"), (
        f"{states}; see {tmp_path / 'airflow' / 'dag_test.log'}")
    assert run["state"] == "success"
    # the form reached the steps: one SFT epoch instead of the params file's two
    sft_metrics = json.loads((workspace / "reports" / "sft_metrics.json").read_text())
    assert sft_metrics["epochs"] <= 1.0 + 1e-6
    # one MLflow parent run per DAG run, the steps' runs nested under it
    runs = retrain_runs(params_file, run["run_id"])
    assert {"retrain", "sft", "dpo"} <= set(runs)
    assert runs["sft"].data.tags["mlflow.parentRunId"] == runs["retrain"].info.run_id
    champion = champion_version(params_file)
    assert champion is not None, "no `champion` alias after a passed gate and promote"
    print(f"dag.test retrain: {seconds:.0f} s")
    assert run["tasks"]["prompts_shard"]["map_indexes"] == [0, 1, 2]  # the form's count, one mapped task each
    assert_same_as_one_shard(load_params(params_file, ds.overrides_from_params(SHARDED_CONF)), tmp_path / "one")


def assert_same_as_one_shard(params, scratch: Path) -> None:
    """S-IDs, prompts and the candidate store the 3-shard run left equal what one unsharded run writes."""
    from leadre.data.tables import read_tables
    from leadre.prompts.build import run_build_prompts
    from leadre.serve.nearline import run_nearline
    from leadre.serve.service import store_url
    from leadre.serve.store import open_store
    from leadre.sids.build import run_build_sids

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    one = params.model_copy(update={
        "sids": params.sids.model_copy(update={"out_dir": scratch / "sids",
                                               "embeddings_cache": scratch / "embeddings"}),
        "prompts": params.prompts.model_copy(update={"out_dir": scratch / "prompts"})})
    run_build_sids(one)
    assert files(params.path(params.sids.out_dir)) == files(scratch / "sids")
    run_build_prompts(one)
    assert files(params.path(params.prompts.out_dir)) == files(scratch / "prompts")

    users = read_tables(params.path(params.data.validated_dir), names=("users",))["users"]["user_id"].tolist()
    store = open_store(store_url(params))
    try:
        def snapshot() -> dict[int, tuple]:
            found = {u: store.get(u) for u in users}
            return {u: (c.ad_ids.tolist(), c.model_version, c.scores) for u, c in found.items() if c is not None}

        sharded = snapshot()
        run_nearline(params)  # unsharded, the same champion: a new snapshot replaces the sharded one
        unsharded = snapshot()
    finally:
        store.close()
    assert sharded and sharded.keys() == unsharded.keys()
    for user, (ads, version, scores) in unsharded.items():
        assert sharded[user][1] == version, user
        assert_same_ranking(sharded[user][0], sharded[user][2], ads, scores, f"user {user}")


def assert_same_ranking(ads_a, scores_a, ads_b, scores_b, label: str, rtol: float = 1e-5) -> None:
    """Two top-N lists of one user from differently composed batches: the same scores place by place, to float
    rounding (a batch's padding changes the sums' order), and the same ads except where two of them tie within that
    rounding, which may then swap places or swap the last place with the first left out."""
    scores_a, scores_b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    assert len(ads_a) == len(ads_b), label
    np.testing.assert_allclose(scores_a, scores_b, rtol=rtol, err_msg=label)
    tolerance = 2 * rtol * max(1.0, float(np.abs(scores_b).max(initial=0.0)))
    score_b = dict(zip(ads_b, scores_b))
    for place, (ad, score) in enumerate(zip(ads_a, scores_a)):
        if ad == ads_b[place]:
            continue
        if ad in score_b:  # moved: only past an ad of the same score
            assert abs(score_b[ad] - score) <= tolerance and abs(scores_b[place] - score) <= tolerance, (label, ad)
        else:  # not in the other list: it tied with that list's last
            assert abs(scores_b[-1] - score) <= tolerance, (label, ad)


# ------------------------------------------------------------------------------------------------ REST API

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    def __init__(self, base: str):
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        try:
            return status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return status, text


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen, log: Path, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airflow standalone exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text(errors='replace')[-6000:]}")
        try:
            value = check()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n"
                         f"{log.read_text(errors='replace')[-6000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGINT to standalone (SIGTERM leaves the scheduler and workers running), then the rest of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):  # anything left in the process group standalone started
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        time.sleep(3)


@pytest.mark.slow
def test_rest_api_triggers_a_retrain_that_succeeds(tmp_path, prepared_data):
    workspace = tmp_path / "workspace"
    prepared_workspace(workspace, prepared_data)
    params_file = workspace / "params.yaml"
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = isolated_airflow_env(
        home, DAGS,
        # params.yaml's default (no schedule): unpausing must start nothing ahead of the triggered run, which
        # max_active_runs=1 would queue behind it; the run list is checked at the end
        LEADRE_PARAMS=str(params_file), LEADRE_RETRIES="0",
        AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(port), AIRFLOW__API__BASE_URL=base,
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
    )
    log = home / "standalone.log"
    airflow = str(Path(sys.executable).with_name("airflow"))
    api = Api(base)
    with log.open("w") as out:
        proc = subprocess.Popen([airflow, "standalone"], env=env, cwd=workspace, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("the API server", lambda: api.call("GET", "/api/v2/monitor/health")[0] == 200, 300, proc, log)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for("the admin password", passwords.exists, 60, proc, log)
        password = json.loads(passwords.read_text())["admin"]
        status, body = api.call("POST", "/auth/token", {"username": "admin", "password": password})
        assert status in (200, 201), body
        api.token = body["access_token"]
        wait_for("the DAG to be parsed", lambda: api.call("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200, 300, proc,
                 log)
        status, body = api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, body
        # a bad form value is refused before anything runs
        status, body = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                                {"logical_date": None, "conf": {"sft_epochs": -1}})
        assert status == 400, (status, body)
        status, body = api.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": TINY_CONF})
        assert status == 200, (status, body)
        run_id = body["dag_run_id"]
        quoted = urllib.request.quote(run_id, safe="")

        def finished():
            status, run = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}")
            return run if status == 200 and run["state"] in ("success", "failed") else None

        run = wait_for("the retrain", finished, 15 * 60, proc, log, every=5)
        status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances")
        states = {ti["task_id"]: ti["state"] for ti in body["task_instances"]}
        assert run["state"] == "success" and states == dict.fromkeys(TASKS, "success"), (
            f"{run['state']}: {states}; task logs under {home / 'logs'}")
        assert champion_version(params_file) is not None
        status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")
        assert [r["dag_run_id"] for r in body["dag_runs"]] == [run_id]
    finally:
        stop(proc)
