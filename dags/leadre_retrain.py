"""
# LEADRE retrain

validate → sids → prompts → sft → dpo → evaluate → gate → promote → nearline, from the trigger form (and on
`orchestration.schedule` in params.yaml when one is set; none by default): one task per row of the step table
(`leadre/steps.py`), in its order. Every task runs the same step function
as `leadre <step>` and `dvc repro`; nothing here re-implements a step.

* **Gate**: `gate` decides. When the candidate does not pass, `promote` is skipped and the run still succeeds.
  `nearline` runs either way (trigger rule `none_failed`): it refreshes the candidate cache with whichever model
  is champion, the new one or the current one. A failure anywhere upstream stops it.
* **Runner** (`orchestration.runner` in params.yaml, `$LEADRE_RUNNER` wins; read when the DAG is parsed):
  `local` runs each step in the Airflow worker; `kubernetes` runs each step as a pod of the project's image
  (`leadre/orchestration/pods.py`; GPU pods for sft, dpo and nearline).
* **Shards**: sids, prompts and nearline fan out: `<step>_shards` plans the count (`orchestration.shards.<step>`
  or the form's "Scale" fields), `<step>_shard` is mapped over it (dynamic task mapping; a pod each under
  kubernetes), and the task named after the step merges the parts. Same output for any count.
* **Form**: empty fields keep params.yaml's value; `overrides` takes any other dotted key (`{"sft.batch_size": 8}`).
* **Where to look when a step fails**: its task log starts with a report naming the try, the log URL, the MLflow
  runs (one parent run per DAG run, tagged `leadre.retrain_id` = the run id, one nested run per step) and the
  step's output files. SFT and DPO keep checkpoints: a retry resumes nothing by itself, `--resume` does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from airflow.sdk import dag, task

from leadre.orchestration import dag_support as ds
from leadre.steps import STEPS

DEFAULT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # dags/ sits beside params.yaml
ds.set_default_params(ds.params_file(DEFAULT_PARAMS))
SETTINGS = ds.load_settings(ds.params_file(DEFAULT_PARAMS))


def local_step(step: str):
    """A TaskFlow task that runs one step in the worker."""

    @task(task_id=step, **ds.step_task_kwargs(step, SETTINGS))
    def run_step() -> dict:
        return ds.run_local_step(step, DEFAULT_PARAMS)

    return run_step()


def sharded_local_step(step: str):
    """A data-parallel step: plan the run's shard count, one mapped task per shard, then the merge (named `step`)."""

    @task(task_id=ds.shard_plan_id(step), **ds.shard_plan_kwargs(step, SETTINGS))
    def plan() -> list[str]:
        return ds.local_shards(step, DEFAULT_PARAMS)

    @task(task_id=ds.shard_task_id(step), **ds.shard_task_kwargs(step, SETTINGS))
    def run_shard(shard: str) -> dict:
        return ds.run_local_step(step, DEFAULT_PARAMS, shard=shard)

    @task(task_id=step, **ds.shard_task_kwargs(step, SETTINGS) | {"doc_md": STEPS[step].doc})
    def merge(shards: list[str]) -> dict:
        return ds.run_local_step(step, DEFAULT_PARAMS, merge=len(shards))

    shards = plan()
    merged = merge(shards)
    run_shard.expand(shard=shards) >> merged
    return shards, merged


def local_gate():
    """The gate as a short-circuit: False skips `promote` only (downstream trigger rules are respected)."""

    @task.short_circuit(task_id=ds.GATE, ignore_downstream_trigger_rules=False,
                        **ds.step_task_kwargs(ds.GATE, SETTINGS))
    def gate() -> bool:
        return ds.run_local_gate(DEFAULT_PARAMS)

    return gate()


@dag(
    dag_id=ds.DAG_ID,
    schedule=SETTINGS.schedule,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=ds.default_args(SETTINGS),
    params=ds.form_params(ds.params_file(DEFAULT_PARAMS)),
    tags=["leadre", "retrain", SETTINGS.runner],
    doc_md=__doc__,
)
def leadre_retrain():
    if SETTINGS.runner == "kubernetes":
        # Imported only when selected: the local default never loads the Kubernetes provider at parse time.
        from airflow.providers.cncf.kubernetes.operators.pod import (
            KubernetesPodOperator,
        )

        from leadre.orchestration.pods import KubernetesRunnerSettings

        pod_settings = KubernetesRunnerSettings.from_env()

        def pod_step(step: str):
            merged = KubernetesPodOperator(task_id=step, **ds.pod_task_kwargs(step, SETTINGS, pod_settings))
            if not STEPS[step].shardable:
                return merged, merged
            # one pod per shard; the plan runs in the worker (light: params and the form)
            @task(task_id=ds.shard_plan_id(step), **ds.shard_plan_kwargs(step, SETTINGS))
            def plan() -> list[list[str]]:
                return ds.pod_shard_arguments(step, DEFAULT_PARAMS, pod_settings)

            shards = plan()
            mapped = KubernetesPodOperator.partial(task_id=ds.shard_task_id(step),
                                                   **ds.shard_pod_kwargs(step, SETTINGS, pod_settings))
            mapped.expand(arguments=shards) >> merged
            shards >> merged  # the merge pod reads the plan (its shard count), as the local merge task does
            return shards, merged

        steps = [pod_step(step) for step in STEPS]
    else:
        steps = [local_gate() if step == ds.GATE else sharded_local_step(step) if STEPS[step].shardable
                 else local_step(step) for step in STEPS]
    # (first, last) task of each step; a plain step is both
    ends = [step if isinstance(step, tuple) else (step, step) for step in steps]
    for (_, last), (first, _) in zip(ends, ends[1:]):
        last >> first


leadre_retrain()
