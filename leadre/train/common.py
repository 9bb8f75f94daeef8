"""What SFT and DPO share: trainer arguments from params, LoRA, checkpoints, and the saved model bundle."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leadre.config import LoraParams, ModelParams, Params, _TrainerParams
from leadre.bundle import write_bundle
from leadre.errors import UserError
from leadre.io import write_json
from leadre.train.model import BUILTIN_TINY
from leadre.runtime import interactive

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def lora_enabled(lora: LoraParams, model: ModelParams) -> bool:
    """`auto`: LoRA for hub models (billions of frozen weights), full fine-tuning for the tiny default."""
    return (model.base_model != BUILTIN_TINY) if lora.enabled == "auto" else bool(lora.enabled)


def lora_config(lora: LoraParams, new_token_ids: list[int], tied_embeddings: bool):
    """PEFT LoRA on the linear layers; the S-ID token rows of the embeddings train too (they start untrained).

    Untied models train just those rows (`trainable_token_indices`). Tied ones (Qwen2.5 0.5B/1.5B) train the whole
    embedding and head instead: peft's wrapper for a tied head lacks the `bias` TRL's fused loss reads (peft 0.21,
    TRL 1.16).
    """
    from peft import LoraConfig

    extra = ({"modules_to_save": ["embed_tokens", "lm_head"]} if tied_embeddings
             else {"trainable_token_indices": {"embed_tokens": new_token_ids}})
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM", **extra)


def tied(model) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def score_only_supervised_positions() -> None:
    """Make TRL's fused loss project only the positions that carry a label, on every device.

    TRL 1.16 does that only where Triton runs (CUDA/XPU); elsewhere it pushes every position of the batch through its
    chunked LM-head kernel (the switch exists for Neuron, which recompiles per tensor shape). With the loss on the
    response, ~3% of positions carry a label, so on CPU the full pass tripled the step time for the same loss
    (measured: 9.7 s → 3.3 s for 10 steps, identical train_loss). The function is private to TRL, which is pinned.
    """
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def reproducibility_facts() -> dict[str, int]:
    """What a rerun must match to reproduce the weights bit for bit on CPU: the intra-op thread count decides the
    order of floating-point reductions (docs/evaluation.md, "Reproducibility")."""
    import torch

    return {"leadre.torch_threads": torch.get_num_threads()}


def device_arguments() -> dict[str, bool]:
    """bf16 where the GPU supports it, full precision on CPU (TRL's bf16 default fails there); pinned host memory
    only when there is a GPU to copy batches to (on CPU torch warns at every data loader that it cannot pin)."""
    import torch

    gpu = torch.cuda.is_available()
    # use_cpu: accelerate treats a launcher's ranks as a CPU process group (gloo) only when told it runs on CPU;
    # without it each rank would train alone, on all the data, and write its own model
    return {"bf16": gpu and torch.cuda.is_bf16_supported(), "fp16": False, "dataloader_pin_memory": gpu,
            "use_cpu": not gpu}


def prepare_process(params: Params) -> None:
    """What every training process does first, before any torch work: its CPU threads (per rank under a launcher),
    the launcher's process group, quiet libraries."""
    import os

    from leadre.train import processes, progress

    # The batched tokenisation before SFT would start the tokenizers library's own thread pool; with it, the
    # training steps that followed ran ~7% slower on 2 cores (3 paired runs of 188 steps: 36.2 s vs 33.8 s), for
    # ~11 s saved in a 50k-row tokenisation. torch's threads get the cores. TOKENIZERS_PARALLELISM=true overrides.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    processes.set_threads(params.model.cpu_threads)
    processes.start()
    progress.quiet_libraries()
    score_only_supervised_positions()


def batch_per_process(step: str, batch_size: int) -> int:
    """`<step>.batch_size` is the batch of one optimizer step (before gradient accumulation), however many
    processes share it: params describe the training, not the machine, so 1 and N processes take the same steps
    on the same batches (the loss curves match within floating-point noise)."""
    from leadre.train.processes import world_size

    processes = world_size()
    if batch_size % processes:
        raise UserError(f"{step}.batch_size {batch_size} cannot be split evenly across {processes} training "
                        f"processes: use a multiple of {processes}")
    return batch_size // processes


def trainer_arguments(step: str, cfg: _TrainerParams, checkpoints: Path, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and DPOConfig (both extend transformers' TrainingArguments).

    `checkpoints` is `checkpoint_dir` resolved against params.yaml's folder (`params.path`), never the working
    directory: `--resume` looks there, wherever the command was started from.
    """
    every = cfg.checkpoint_every_steps
    strategy = "steps" if every else "epoch"
    batch = batch_per_process(step, cfg.batch_size)
    return dict(
        output_dir=str(checkpoints), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        # every parameter that trains takes part in every forward pass (full fine-tuning, or LoRA with its token
        # rows): DDP's search for unused ones is an extra pass over the graph per step for nothing
        ddp_find_unused_parameters=False,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_length=cfg.max_length,
        # the name transformers 5 reads (`gradient_checkpointing` is its deprecated alias and warns)
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy=strategy, save_steps=every or None, save_total_limit=2,
        eval_strategy=strategy if has_eval else "no", eval_steps=every or None,
        load_best_model_at_end=has_eval, metric_for_best_model="eval_loss", greater_is_better=False,
        report_to=["mlflow"], dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
        disable_tqdm=not interactive(), **device_arguments())


def new_token_ids(tokenizer, sid_tokens: list[str]) -> list[int]:
    return tokenizer.convert_tokens_to_ids(sid_tokens)


def save_bundle(params: Params, model, tokenizer, target: Path, meta: dict[str, Any],
                response_counts: pd.Series | None = None) -> None:
    """The model bundle (leadre/bundle.py) with this run's S-ID files."""
    write_bundle(target, model, tokenizer, params.path(params.sids.out_dir), meta, response_counts)


def log_metrics_file(path: Path, metrics: dict[str, float]) -> None:
    """The DVC metrics file of a step (`dvc metrics show/diff`): plain numbers, rounded for readable diffs."""
    write_json(path, {k: round(float(v), 6) for k, v in sorted(metrics.items())})


def log_bundle(params: Params, folder: Path) -> None:
    """Log the model folder to the active run (the registry's pyfunc flavour wraps it in the registry step)."""
    import mlflow

    if params.tracking.log_models:
        mlflow.log_artifacts(str(folder), artifact_path="model")


@contextmanager
def main_process_run(params: Params, step: str, inputs: dict[str, Path]) -> Iterator[Any]:
    """The step's MLflow run on rank 0 (None on the other ranks: one run per step, however many processes train).

    The trainer's MLflow callback logs from rank 0 only, into this active run.
    """
    from leadre.train import processes

    if processes.is_main_process():
        from leadre.tracking import step_run

        with step_run(params, step, inputs, training=True) as run:  # TrainingArguments: one artifact, not params
            yield run
    else:
        yield None


# Metrics of the machine's speed, not of the model: MLflow records them (`final.train_seconds`), while the bundle and
# the DVC metrics file, which DVC hashes, hold only what the inputs determine. A rerun that trains the same weights
# then leaves both byte-identical, and `dvc repro` does not re-run DPO, evaluation, the gate and promotion for it.
WALL_CLOCK_METRICS = frozenset({"train_seconds", "train_tokens_per_second"})


def finish_on_main(params: Params, cfg: _TrainerParams, step: str, final, tokenizer, meta: dict[str, Any],
                   metrics: dict[str, float], arguments: Any = None, response_counts: pd.Series | None = None) -> None:
    """Rank 0's writes at the end of a step: the bundle (with the main-task response counts the model learned
    from), the run's final metrics and model, the DVC metrics file, and the trainer's full `arguments` as the run's
    training_arguments.json. The run logs the bundle, so the run leads to the model; the bundle names no run (a run
    id differs on every rerun, and DVC hashes the bundle)."""
    import mlflow

    from leadre.tracking import log_training_arguments

    if arguments is not None:
        log_training_arguments(arguments)

    target = params.path(cfg.out_dir)
    reproducible = {k: v for k, v in metrics.items() if k not in WALL_CLOCK_METRICS}
    save_bundle(params, final, tokenizer, target, {"step": step, "base_model": params.model.base_model, **meta,
                                                   "metrics": reproducible}, response_counts)
    mlflow.log_metrics({f"final.{k}": v for k, v in metrics.items()})
    log_bundle(params, target)
    log_metrics_file(params.path(cfg.metrics_file), reproducible)
