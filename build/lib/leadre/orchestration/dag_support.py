"""What the Airflow DAG (dags/leadre_retrain.py) needs besides its graph: settings, the trigger form, the task
bodies of the local runner, the pod arguments of the Kubernetes runner, and the failure callback.

Imported by the DAG file at parse time, so only the standard library, PyYAML, pydantic, `leadre.config` and
`leadre.steps` (both light) are imported at module level; Airflow, the Kubernetes provider and every step's heavy
libraries are imported inside the functions that run a task.

Settings come from the `orchestration` section of params.yaml, read and checked by leadre.config (one line naming
the file and key when it is wrong: the DAG shows it as its import error), then the environment: $LEADRE_RUNNER,
$LEADRE_RETRIES (tests set 0 to fail fast) and $LEADRE_SCHEDULE ("none": trigger only) win. The default has no
schedule: a retrain runs when triggered (see `orchestration.schedule` in params.yaml).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from leadre.config import ConfigError, OrchestrationParams, load_section, read_params_file
from leadre.steps import STEPS, get_step, resolve

log = logging.getLogger("leadre.airflow")

DAG_ID = "leadre_retrain"
GATE, PROMOTE = "gate", "promote"  # the gate's "no" skips promote (the steps' order is leadre.steps.STEPS)
RUNNER_ENV = "LEADRE_RUNNER"
RETRIES_ENV = "LEADRE_RETRIES"
SCHEDULE_ENV = "LEADRE_SCHEDULE"   # a cron preset/expression, or "none": trigger only (tests, dev deployments)
PARAMS_ENV = "LEADRE_PARAMS"       # the same variable leadre.config reads
RETRAIN_ENV = "LEADRE_RETRAIN_ID"  # the same variable leadre.tracking reads: one MLflow parent run per DAG run
DEFAULT_MODEL_NAME = "leadre-recommender"

# Kubernetes runner: KubernetesPodOperator(do_xcom_push=True) mounts an emptyDir at /airflow/xcom and reads
# return.json from it after the container exits. The gate pod writes its decision there with `leadre gate --xcom`.
XCOM_RETURN_FILE = "/airflow/xcom/return.json"
GATE_POD_ARGS: tuple[str, ...] = ("--xcom", XCOM_RETURN_FILE)


# ------------------------------------------------------------------------------------------------ settings

OrchestrationSettings = OrchestrationParams  # the `orchestration` section, typed in leadre/config.py


def params_file(default: Path | str) -> Path:
    """$LEADRE_PARAMS, else `default` (the DAG passes the params.yaml beside its dags/ folder)."""
    return Path(os.environ.get(PARAMS_ENV) or default)


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> OrchestrationSettings:
    """Settings from the `orchestration` section of `path` (None: $LEADRE_PARAMS or ./params.yaml), then the
    environment; a ConfigError (one line, naming the file and key) when they are wrong.

    $LEADRE_RUNNER, $LEADRE_RETRIES and $LEADRE_SCHEDULE ("none": no schedule) override the file. They are read
    when the DAG file is parsed: set them in the environment of every Airflow component (scheduler, DAG
    processor, workers), as k8s/airflow/values.yaml does for LEADRE_RUNNER.
    """
    environ = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    if environ.get(RUNNER_ENV):
        changes["runner"] = environ[RUNNER_ENV].strip().lower()
    if environ.get(RETRIES_ENV):
        changes["retries"] = environ[RETRIES_ENV]
    if environ.get(SCHEDULE_ENV):
        schedule = environ[SCHEDULE_ENV].strip()
        changes["schedule"] = None if schedule.lower() in {"none", "null"} else schedule
    return load_section(path, "orchestration", changes)


def default_args(settings: OrchestrationSettings) -> dict[str, Any]:
    """Every task: retries with exponential back-off, and the failure callback that says where to look."""
    return {
        "owner": "leadre",
        "retries": settings.retries,
        "retry_delay": timedelta(minutes=settings.retry_delay_minutes),
        "retry_exponential_backoff": settings.retry_exponential_backoff,
        "max_retry_delay": timedelta(minutes=settings.max_retry_delay_minutes),
        "on_failure_callback": on_step_failure,
        "on_retry_callback": on_step_retry,
    }


def step_task_kwargs(step: str, settings: OrchestrationSettings) -> dict[str, Any]:
    """Per-step task arguments shared by both runners."""
    spec = get_step(step)
    doc = spec.doc + (" GPU pod on the Kubernetes runner." if spec.gpu else "")
    kwargs: dict[str, Any] = {"execution_timeout": settings.timeout(step), "doc_md": doc}
    if spec.after_skip:
        # e.g. near-line refreshes the candidate cache with whatever model is champion: the new one when the gate
        # passed and `promote` ran, the current one when the gate held the candidate back (promote skipped).
        # none_failed: run after a success or a skip, never after a failure upstream.
        kwargs["trigger_rule"] = "none_failed"
    return kwargs


# ------------------------------------------------------------------------------------------------ the form

@dataclass(frozen=True)
class FormField:
    """One field of the trigger form: the dotted params keys it sets and its JSON-schema (validated on trigger)."""

    keys: tuple[str, ...]
    title: str
    description: str
    schema: Mapping[str, Any]
    section: str = "Training"
    values: Mapping[Any, Any] = field(default_factory=dict)  # form value → params value (e.g. "on" → True)

    def params_value(self, value: Any) -> Any:
        return self.values.get(value, value) if self.values else value


_NUMBER = ["null", "number"]
_INTEGER = ["null", "integer"]
_STRING = ["null", "string"]
_ISO_INSTANT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$"

# Empty (null) fields keep the params.yaml value. The table is deliberately small and explicit; anything else goes
# through `overrides` (dotted key → value, exactly like `leadre -S key=value`).
FORM: Mapping[str, FormField] = {
    "base_model": FormField(
        ("model.base_model",), "Base model",
        "builtin:tiny, or a local Hugging Face causal-LM folder / cached hub id (nothing is downloaded).",
        {"type": _STRING, "minLength": 1, "pattern": r"^\S+$"}, section="Model"),
    "lora": FormField(
        ("sft.lora.enabled", "dpo.lora.enabled"), "LoRA",
        "auto: on for hub models, off for builtin:tiny. Applies to SFT and DPO.",
        {"type": _STRING, "enum": [None, "auto", "on", "off"]}, section="Model",
        values={"on": True, "off": False, "auto": "auto"}),
    "lora_r": FormField(
        ("sft.lora.r", "dpo.lora.r"), "LoRA rank", "Rank of the LoRA adapters (SFT and DPO).",
        {"type": _INTEGER, "minimum": 1, "maximum": 1024}, section="Model"),
    "sft_epochs": FormField(
        ("sft.epochs",), "SFT epochs", "Epochs of supervised fine-tuning.",
        {"type": _NUMBER, "exclusiveMinimum": 0, "maximum": 100}),
    "learning_rate": FormField(
        ("sft.learning_rate",), "SFT learning rate", "e.g. 0.003 for builtin:tiny, ~2e-4 for LoRA on a hub model.",
        {"type": _NUMBER, "exclusiveMinimum": 0, "maximum": 1}),
    "max_train_examples": FormField(
        ("sft.max_train_examples",), "SFT training rows", "0 = all rows of the mixture.",
        {"type": _INTEGER, "minimum": 0}),
    "dpo_epochs": FormField(
        ("dpo.epochs",), "DPO epochs", "Epochs of preference alignment.",
        {"type": _NUMBER, "exclusiveMinimum": 0, "maximum": 100}),
    "dpo_learning_rate": FormField(
        ("dpo.learning_rate",), "DPO learning rate", "Learning rate of preference alignment.",
        {"type": _NUMBER, "exclusiveMinimum": 0, "maximum": 1}),
    "dpo_beta": FormField(
        ("dpo.beta",), "DPO beta", "Strength of the pull towards the SFT (reference) model.",
        {"type": _NUMBER, "exclusiveMinimum": 0, "maximum": 100}),
    "snapshot_time": FormField(
        ("data.snapshot_time",), "Data snapshot",
        "The data snapshot instant, with a UTC offset (2026-11-01T00:00:00+00:00): later events are rejected.",
        {"type": _STRING, "format": "date-time", "pattern": _ISO_INSTANT}, section="Data"),
    "source_dir": FormField(
        ("data.source_dir",), "Data source folder",
        "What validation reads: data/generated or data/imported (relative to params.yaml).",
        {"type": _STRING, "minLength": 1}, section="Data"),
    **{f"{step}_shards": FormField(
        (f"orchestration.shards.{step}",), f"{step} shards",
        f"Parallel tasks (pods on Kubernetes) of `{step}`, each a share of the "
        f"{'ads' if step == 'sids' else 'users'}; the output is the same for any count.",
        {"type": _INTEGER, "minimum": 1, "maximum": 1024}, section="Scale")
       for step in ("sids", "prompts", "nearline")},
}
OVERRIDES_FIELD = "overrides"


def form_params(path: Path | str | None = None) -> dict[str, Any]:
    """The DAG's params: one `Param` per form field (default null = params.yaml's value) plus `overrides`."""
    from airflow.sdk import Param

    current = read_params_file(path)
    params: dict[str, Any] = {}
    for name, spec in FORM.items():
        value = _dotted(current, spec.keys[0])
        note = f" Empty: params.yaml ({value})." if value is not None else " Empty: the params.yaml value."
        params[name] = Param(None, title=spec.title, description=spec.description + note, section=spec.section,
                             **spec.schema)
    params[OVERRIDES_FIELD] = Param(
        {}, type="object", title="Other params", section="Advanced",
        description='Any other params.yaml key, dotted, as `leadre -S`: {"sft.batch_size": 8}. '
                    "Checked against params.yaml's types when the first step starts.",
        propertyNames={"pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"})
    return params


def _dotted(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def overrides_from_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run's form values → dotted params overrides; null fields are left to params.yaml."""
    overrides: dict[str, Any] = {}
    for name, spec in FORM.items():
        value = values.get(name)
        if value is None or value == "":
            continue
        for key in spec.keys:
            overrides[key] = spec.params_value(value)
    for key, value in dict(values.get(OVERRIDES_FIELD) or {}).items():
        overrides[str(key)] = value
    return overrides


def cli_set_args(overrides: Mapping[str, Any]) -> list[str]:
    """`-S key=value` pairs the `leadre` CLI parses back with yaml.safe_load to exactly these values."""
    args: list[str] = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
        if text.endswith("\n..."):
            text = text[: -len("\n...")]
        elif text.endswith("..."):
            text = text[: -len("...")].strip()
        args += ["-S", f"{key}={text}"]
    return args


# ------------------------------------------------------------------------------------------------ local runner

@contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def quiet_library_logs() -> None:
    """Library logging inside a task, set where it starts: the task log is read by people looking for our lines.

    - Great Expectations logs one INFO line per public function it registers ("Skipping registering function ...",
      200-odd per validate task): the same WARNING floor as the `leadre` CLI gives it.
    - MLflow installs its own handler on sys.stderr when it is first imported; Airflow files every stderr line of a
      task as an ERROR, so its INFO lines ("View run ...") showed red. Without that handler its records go through
      the task's logging like any other library's, at their own level. A value the user set is kept.
    """
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def run_local_step(step: str, default_params: Path | str, shard: str | None = None, merge: int | None = None) -> Any:
    """The body of a local-runner task: `leadre.steps.run_step` (the CLI's and DVC's code) with the form's overrides.

    LEADRE_RETRAIN_ID is the DAG run id, so every step's MLflow run nests under one parent run per retrain.
    A `UserError` (bad params, data, model or registry state) fails the task without retries: a second try would
    fail the same way. Anything else is retried.
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from leadre.errors import UserError
    from leadre.steps import run_step

    quiet_library_logs()
    context = get_current_context()
    overrides = overrides_from_params(context["params"])
    path = params_file(default_params)
    log.info("step %s: params %s, overrides %s, retrain %s", step, path, overrides or "none", context["run_id"])
    try:
        with _env(RETRAIN_ENV, context["run_id"]):
            summary = run_step(step, path, overrides, shard=shard, merge=merge)
    except UserError as err:
        raise AirflowFailException(f"{step}: {err}") from err
    return jsonable(summary)


def run_local_gate(default_params: Path | str) -> bool:
    """The gate task (a short-circuit): runs the gate step, keeps its summary as XCom `summary`, returns `passed`."""
    from airflow.sdk import get_current_context

    summary = run_local_step(GATE, default_params)
    passed = gate_passed(summary)
    get_current_context()["ti"].xcom_push(key="summary", value=summary)
    log.info("gate %s: %s", "passed" if passed else "did not pass (promote is skipped)", summary)
    return passed


def gate_passed(summary: Any) -> bool:
    if not isinstance(summary, Mapping) or not isinstance(summary.get("passed"), bool):
        raise ValueError(f"the gate's summary must carry a boolean 'passed', got {summary!r}")
    return summary["passed"]


def jsonable(value: Any) -> Any:
    """A step summary as plain JSON (paths and timestamps as strings) for XCom."""
    return json.loads(json.dumps(value, default=str))


# ------------------------------------------------------------------------------------------------ kubernetes runner

def pod_task_kwargs(step: str, settings: OrchestrationSettings, k8s_settings: Any = None) -> dict[str, Any]:
    """`KubernetesPodOperator(task_id=step, **kwargs)` for one step: pods.pod_operator_kwargs plus what the DAG adds.

    The form's overrides are known only when a run starts, so a pre-execute hook puts them into the pod's
    arguments as `-S key=value` global options (before the subcommand, where the CLI reads them). The gate pod
    runs `leadre gate --xcom /airflow/xcom/return.json` with do_xcom_push; its post-execute hook skips `promote`
    unless the decision says passed.
    """
    from leadre.orchestration.pods import KubernetesRunnerSettings, pod_operator_kwargs

    k8s_settings = (k8s_settings or KubernetesRunnerSettings.from_env()).with_(
        training_gpus=settings.gpus_per_training_pod)
    extra = GATE_POD_ARGS if step == GATE else ()
    kwargs = pod_operator_kwargs(step, k8s_settings, extra_args=extra)
    kwargs.update(step_task_kwargs(step, settings))
    kwargs["do_xcom_push"] = step == GATE
    merge_from = None
    if get_step(step).shardable:  # the merge pod (`--merge n`), after its shards: the plan applied the trigger rule
        merge_from = shard_plan_id(step)
        kwargs.pop("trigger_rule", None)
    kwargs["pre_execute"] = _ArgumentsHook(step, tuple(kwargs["arguments"]), merge_from)
    if step == GATE:
        kwargs["post_execute"] = gate_pod_decision
    return kwargs


@dataclass(frozen=True)
class _ArgumentsHook:
    """pre_execute hook of a step pod: the form's overrides become `-S` options of the `leadre` command."""

    step: str
    arguments: tuple[str, ...]  # as built at parse time: a retry in the same process starts from these again
    merge_from: str | None = None  # a sharded step's plan task: the merge pod joins as many shards as it planned

    def __call__(self, context: Mapping[str, Any]) -> None:
        task = context["task"]
        merge = ("--merge", str(len(context["ti"].xcom_pull(task_ids=self.merge_from)))) if self.merge_from else ()
        task.arguments = pod_arguments([*self.arguments, *merge], overrides_from_params(context["params"]))
        log.info("step %s: pod runs leadre %s", self.step, " ".join(task.arguments))


def pod_arguments(arguments: list[str], overrides: Mapping[str, Any]) -> list[str]:
    """["--params", FILE, <subcommand...>] → ["--params", FILE, -S k=v ..., <subcommand...>]."""
    if arguments[:1] != ["--params"] or len(arguments) < 3:
        raise ValueError(f"expected ['--params', FILE, ...], got {arguments}")
    return [*arguments[:2], *cli_set_args(overrides), *arguments[2:]]


def gate_pod_decision(context: Mapping[str, Any], result: Any) -> None:
    """post_execute hook of the gate pod: `result` is the decision the pod wrote to /airflow/xcom/return.json."""
    from airflow.sdk import SkipMixin

    passed = gate_passed(result)
    if passed:
        log.info("gate passed: %s", result)
        return
    log.info("gate did not pass, promote is skipped: %s", result)
    ti, task = context["ti"], context["task"]
    # the decision stays visible as the gate's XCom (skipping ends the task before Airflow pushes the result)
    ti.xcom_push(key="return_value", value=result)
    skipper = SkipMixin()
    skipper.task_id = task.task_id  # records the skip in XCom, so clearing promote alone skips it again
    skipper.skip(ti=ti, tasks=[t for t in task.get_direct_relatives(upstream=False) if t.task_id == PROMOTE])


# ------------------------------------------------------------------------------------------------ sharded steps
# A shardable step (leadre/steps.py: `merge` set) becomes three tasks: `<step>_shards` plans the run's shard count
# (params.yaml's orchestration.shards.<step>, or the form's), `<step>_shard` is mapped over the plan (one task, or
# one pod, per shard: `--shard i/n`) and `<step>` merges (`--merge n`). The count is read when the run starts, so
# the form can change it without a redeploy: that is what Airflow's dynamic task mapping is for.

def shard_plan_id(step: str) -> str:
    return f"{step}_shards"


def shard_task_id(step: str) -> str:
    return f"{step}_shard"


def shard_count(step: str, default_params: Path | str) -> int:
    """The running DAG run's shard count of `step`: params.yaml with the form's overrides, as the steps read it."""
    from airflow.sdk import get_current_context

    from leadre.config import load_params

    overrides = overrides_from_params(get_current_context()["params"])
    return getattr(load_params(params_file(default_params), overrides).orchestration.shards, step)


def local_shards(step: str, default_params: Path | str) -> list[str]:
    """The plan task of the local runner: ["0/n", …, "n-1/n"], one mapped task each."""
    count = shard_count(step, default_params)
    log.info("step %s: %d shard(s)", step, count)
    return [f"{i}/{count}" for i in range(count)]


def pod_shard_arguments(step: str, default_params: Path | str, k8s_settings: Any = None) -> list[list[str]]:
    """The plan task of the Kubernetes runner: each shard pod's `leadre` arguments, the form's overrides included."""
    from airflow.sdk import get_current_context

    from leadre.orchestration.pods import shard_arguments

    overrides = overrides_from_params(get_current_context()["params"])
    return [pod_arguments(arguments, overrides)
            for arguments in shard_arguments(step, shard_count(step, default_params), k8s_settings)]


def shard_plan_kwargs(step: str, settings: OrchestrationSettings) -> dict[str, Any]:
    """The plan task runs when the step would (its trigger rule), in seconds."""
    kwargs = step_task_kwargs(step, settings)
    kwargs["doc_md"] = f"How many shards `{step}` runs as in this DAG run (orchestration.shards.{step} or the form)."
    return kwargs


def shard_task_kwargs(step: str, settings: OrchestrationSettings) -> dict[str, Any]:
    kwargs = step_task_kwargs(step, settings)
    kwargs.pop("trigger_rule", None)  # after the plan, which already applied the step's rule
    kwargs["doc_md"] = f"One shard of `{step}` (`--shard i/n`): " + kwargs["doc_md"]
    return kwargs


def shard_pod_kwargs(step: str, settings: OrchestrationSettings, k8s_settings: Any = None) -> dict[str, Any]:
    """`KubernetesPodOperator.partial(task_id=shard_task_id(step), **kwargs).expand(arguments=<plan>)`."""
    from leadre.orchestration.pods import KubernetesRunnerSettings, pod_operator_kwargs

    kwargs = pod_operator_kwargs(step, k8s_settings or KubernetesRunnerSettings.from_env())
    del kwargs["arguments"]  # mapped: each pod's come from the plan
    kwargs["name"] = f"leadre-{step}-shard"
    kwargs.update(shard_task_kwargs(step, settings))
    kwargs["do_xcom_push"] = False
    return kwargs


# ------------------------------------------------------------------------------------------------ callbacks

def failure_report(context: Mapping[str, Any], default_params: Path | str | None = None) -> str:
    """Where to look after a step failed: the try, the Airflow log, the MLflow runs and the step's files."""
    ti = context.get("ti")
    task = context.get("task")
    step = getattr(ti, "task_id", None) or getattr(task, "task_id", "?")
    run_id = context.get("run_id") or getattr(ti, "run_id", "?")
    try_number = getattr(ti, "try_number", None)
    max_tries = getattr(ti, "max_tries", None)
    if max_tries is None and task is not None:
        max_tries = getattr(task, "retries", 0)
    tries = f"try {try_number} of {(max_tries or 0) + 1}" if try_number else "try ?"
    log_url = getattr(ti, "log_url", None) or "(see the task log in the Airflow UI)"
    error = context.get("exception")
    path = params_file(default_params) if default_params or os.environ.get(PARAMS_ENV) else None
    try:
        raw, unreadable = (read_params_file(path), None) if path else ({}, None)
    except ConfigError as err:  # the report still says what it can; the broken params are one more pointer
        raw, unreadable = {}, err
    tracking = raw.get("tracking") or {}
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("tracking_uri", "sqlite:///mlruns.db")
    experiment = tracking.get("experiment", "leadre")
    lines = [
        f"LEADRE retrain step '{step}' failed ({tries}, DAG run {run_id}).",
        f"  error:   {type(error).__name__}: {error}" if error is not None else "  error:   see the task log",
        f"  log:     {log_url}",
        f"  MLflow:  experiment '{experiment}' at {uri}: parent run 'retrain {run_id}', nested run '{step}' "
        f"(filter: tags.`leadre.retrain_id` = '{run_id}')",
    ]
    if unreadable is not None:
        lines.append(f"  params:  {unreadable}")
    files = step_files(step, raw, path)
    if files:
        lines.append(f"  files:   {', '.join(files)}")
    if step in {"sft", "dpo"}:
        lines.append(f"  resume:  checkpoints are kept; `leadre --params {path or 'params.yaml'} {step} --resume` "
                     "continues from the last one")
    if getattr(task, "task_type", type(task).__name__) == "KubernetesPodOperator":
        lines.append(f"  pod:     kubectl get events -n <namespace> --field-selector involvedObject.kind=Pod; "
                     f"pods are labelled leadre.io/step={step}")
    lines.append(f"  rerun:   clear the task in the UI, or `leadre --params {path or 'params.yaml'} "
                 f"{STEPS[step].command_line if step in STEPS else step}` by hand")
    return "\n".join(lines)


def step_files(step: str, raw: Mapping[str, Any], path: Path | None) -> list[str]:
    """The step's declared outputs (leadre/steps.py), resolved against the params file's folder."""
    if step not in STEPS:
        return []
    root = path.resolve().parent if path else Path(".")
    found = []
    for output in STEPS[step].outputs:
        value = resolve(output, lambda key: _dotted(raw, key))
        if value is not None:
            found.append(str(Path(value) if Path(value).is_absolute() else root / value))
    return found


_DEFAULT_PARAMS: list[Path] = []


def set_default_params(path: Path | str) -> None:
    """The DAG file registers the params.yaml beside it, for the callbacks' messages."""
    _DEFAULT_PARAMS[:] = [Path(path)]


def on_step_failure(context: Mapping[str, Any]) -> None:
    """on_failure_callback of every task: logs where to look. Never raises (a callback error hides the real one)."""
    try:
        log.error(failure_report(context, _DEFAULT_PARAMS[0] if _DEFAULT_PARAMS else None))
    except Exception:  # pragma: no cover - defensive: the report is best effort
        log.exception("could not build the failure report")


def on_step_retry(context: Mapping[str, Any]) -> None:
    """on_retry_callback: the same pointers, said as a warning (the step will be tried again after the back-off)."""
    try:
        report = failure_report(context, _DEFAULT_PARAMS[0] if _DEFAULT_PARAMS else None)
        log.warning(report.replace(" failed (", " failed, will retry (", 1))
    except Exception:  # pragma: no cover
        log.exception("could not build the retry report")
