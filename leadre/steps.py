"""The retrain's steps: the one table the CLI, DVC, the Airflow DAG, its pods and `pipelines/retrain.py` read.

One row per step, in retrain order. A row names the function that does the work (`module:function`, imported only
when the step runs, so the DAG file can import this module at parse time), the `leadre` subcommand that runs it, its
one-line doc (the command's help and the DAG task's doc), what it reads and writes as `dvc.yaml` declares it
(tests/pipeline/test_dvc.py holds the two together), whether it wants a GPU pod, and how long Airflow lets it run
(`orchestration.execution_timeout_minutes` in params.yaml overrides that). Every function takes a `Params` and
returns a JSON-able summary; the gate's summary carries `passed`, which decides whether promotion runs.

A shardable step (`merge` set: sids, prompts, nearline) also runs as `--shard i/n` processes, then `--merge n`.

Adding a step: its module, one row here, its `dvc.yaml` stage (and its params section, if it has settings).

Light on purpose: only the standard library.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str
    function: str  # "module:function", called as function(params) -> summary
    command: tuple[str, ...]  # the `leadre` subcommand: ("data", "validate")
    doc: str  # one line: `leadre <command> --help` and the DAG task's doc
    params: tuple[str, ...] = ()  # params.yaml sections or dotted keys the step reads (dvc.yaml `params`)
    # dvc.yaml `deps` and `outs` (+ `metrics`, `plots`), as DVC writes them: "${sids.out_dir}", "leadre/sids"
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    gpu: bool = False  # a GPU pod on the Kubernetes runner ($LEADRE_K8S_GPU_STEPS overrides the set)
    timeout_minutes: float = 60
    in_dvc: bool = True  # False: the step writes outside the repository (a store), so `dvc repro` does not run it
    after_skip: bool = False  # also runs when an upstream step was skipped (not after a failure)
    # Data-parallel: "module:function" called as function(params, shards) to merge the parts the step's shards
    # wrote (the step function then takes `shard=Shard(i, n)`); the DAG maps one task per shard, then merges.
    # Empty: the step runs as one process. `orchestration.shards.<step>` in params.yaml sets n.
    merge: str = ""

    @property
    def shardable(self) -> bool:
        return bool(self.merge)

    @property
    def command_line(self) -> str:
        return " ".join(self.command)


# The output that says a step recorded into this workspace's MLflow store or registry, which DVC cannot see; the
# step writes it last (leadre.tracking.write_receipt). A clone trains the committed run's weights again, so without
# it DVC skipped evaluate, gate and promote (their other outputs are committed files) and the clone's empty registry
# got no champion. Its content is constant, so dvc.lock is too.
def receipt(step: str) -> str:
    return "${tracking.receipts_dir}/" + step


_ROWS = (
    Step("validate", "leadre.data.validate:run_validate", ("data", "validate"),
         "Validate data.source_dir with Great Expectations; write data.validated_dir only if every rule holds.",
         params=("data.snapshot_time", "data.source_dir", "validation"),
         inputs=("${data.source_dir}", "leadre/data/validate.py", "leadre/data/contracts.py", "leadre/data/tables.py"),
         outputs=("${data.validated_dir}", "${validation.reports_dir}/summary.json", "${validation.metrics_file}"),
         timeout_minutes=60),
    Step("sids", "leadre.sids.build:run_build_sids", ("sids", "build"),
         "Semantic IDs: embed ad texts, train residual codebooks, give every ad a unique S-ID (sids.out_dir).",
         params=("sids",), inputs=("${data.validated_dir}", "leadre/sids"),
         outputs=("${sids.out_dir}", "${sids.embeddings_cache}"), timeout_minutes=90,
         merge="leadre.sids.build:merge_sids"),
    Step("prompts", "leadre.prompts.build:run_build_prompts", ("prompts", "build"),
         "Build the SFT mixture (main + auxiliary tasks), the DPO pairs and the evaluation prompts (prompts.out_dir).",
         params=("data.snapshot_time", "evaluate.protocol", "prompts"),
         inputs=("${data.validated_dir}", "${sids.out_dir}", "leadre/prompts"),
         outputs=("${prompts.out_dir}",), timeout_minutes=90, merge="leadre.prompts.card:merge_prompts"),
    Step("sft", "leadre.train.sft:run_sft", ("sft",),
         "Supervised fine-tuning (TRL SFTTrainer) on the main + auxiliary tasks; the model goes to sft.out_dir.",
         params=("model", "sft"), inputs=("${prompts.out_dir}", "${sids.out_dir}", "leadre/train"),
         outputs=("${sft.out_dir}", "${sft.metrics_file}"), gpu=True, timeout_minutes=720),
    Step("dpo", "leadre.train.dpo:run_dpo", ("dpo",),
         "Preference alignment (TRL DPOTrainer) from the SFT model towards higher-eCPM ads; the model goes to "
         "dpo.out_dir.",
         params=("dpo",), inputs=("${prompts.out_dir}", "${sft.out_dir}", "leadre/train"),
         outputs=("${dpo.out_dir}", "${dpo.metrics_file}"), gpu=True, timeout_minutes=480),
    Step("evaluate", "leadre.evaluate.run:run_evaluate", ("evaluate",),
         "Offline evaluation: candidate, champion and baselines on the time split; metrics, plots and report.",
         params=("evaluate", "decode", "fusion"),
         inputs=("${data.validated_dir}", "${sids.out_dir}", "${prompts.out_dir}", "${evaluate.candidate_dir}",
                 "${sft.out_dir}", "leadre/evaluate", "leadre/decode"),
         outputs=("${evaluate.reports_dir}/summary.json", "${evaluate.metrics_file}",
                  "${evaluate.reports_dir}/hr_at_k.csv", "${evaluate.reports_dir}/tradeoff.csv", receipt("evaluate")),
         timeout_minutes=180),
    Step("gate", "leadre.evaluate.gate:run_gate", ("gate",),
         "Decide whether the candidate may replace the champion (promote is skipped when it may not); register it "
         "as the challenger; write the decision.",
         params=("gate", "registry"),
         inputs=("${evaluate.metrics_file}", "${evaluate.reports_dir}/summary.json", "leadre/evaluate/gate.py"),
         outputs=("${gate.decision_file}", receipt("gate")), timeout_minutes=15),
    Step("promote", "leadre.registry.promote:run_promote", ("promote",),
         "Point the registry's `champion` alias at the challenger, if its gate passed.",
         inputs=("${gate.decision_file}", "leadre/registry"), outputs=(receipt("promote"),), timeout_minutes=30),
    Step("nearline", "leadre.serve.nearline:run_nearline", ("nearline",),
         "Near-line refresh: the champion's top-N live ads for every active user, published to the candidate store "
         "(runs whether or not promote ran).",
         outputs=("${serve.ads_file}",), gpu=True, timeout_minutes=240, in_dvc=False, after_skip=True,
         merge="leadre.serve.nearline:merge_nearline"),
)
# Ordered: the retrain runs the steps in this order. Tests add a row with `monkeypatch.setitem`.
STEPS: dict[str, Step] = {step.name: step for step in _ROWS}


def get_step(name: str) -> Step:
    if name not in STEPS:
        raise KeyError(f"unknown step {name!r}; steps are {', '.join(STEPS)}")
    return STEPS[name]


def step_function(name: str) -> Callable[..., Any]:
    module, function = get_step(name).function.split(":")
    return getattr(importlib.import_module(module), function)


def merge_function(name: str) -> Callable[..., Any]:
    """The function that joins a shardable step's parts, called as function(params, shards)."""
    module, function = get_step(name).merge.split(":")
    return getattr(importlib.import_module(module), function)


def call_step(name: str, params: Any, shard: str | None = None, merge: int | None = None) -> Any:
    """Run one step on loaded params: whole, one shard of it (`shard` = "i/n") or the merge of its `merge` shards."""
    step = get_step(name)
    if shard is None and merge is None:
        return step_function(name)(params)
    from leadre.sharding import Shard, ShardError

    if not step.shardable:
        raise ShardError(f"step {name!r} runs as one process: it takes neither --shard nor --merge")
    if shard is not None and merge is not None:
        raise ShardError(f"step {name!r}: --shard runs one shard, --merge joins them; give one of the two")
    if shard is not None:
        return step_function(name)(params, shard=Shard.parse(shard))
    if merge < 1:
        raise ShardError(f"step {name!r}: --merge {merge}: the shard count must be at least 1")
    return merge_function(name)(params, merge)


def run_step(name: str, params_file: Path | str | None = None, overrides: Mapping[str, Any] | None = None,
             shard: str | None = None, merge: int | None = None) -> Any:
    """Load params (file + dotted overrides, as `leadre -S`) and run one step, or one shard of it or its merge;
    returns the step's summary."""
    from leadre.config import load_params

    return call_step(name, load_params(params_file, dict(overrides or {})), shard, merge)


_REFERENCE = re.compile(r"\$\{([^}]+)\}")


def resolve(template: str, lookup: Callable[[str], Any]) -> str | None:
    """A declared input/output with each `${dotted.key}` replaced by `lookup(key)`; None when a key has no value."""
    values = {key: lookup(key) for key in _REFERENCE.findall(template)}
    if any(value is None for value in values.values()):
        return None
    return _REFERENCE.sub(lambda match: str(values[match.group(1)]), template)
