"""`leadre sft`: supervised fine-tuning on the main task + auxiliary alignment tasks with TRL's SFTTrainer.

Prompt-completion rows, so the loss is on the response (the S-ID, or the ad text of the sid_to_text task) only.
Evaluation and checkpoints per epoch (or every N steps), the best checkpoint by validation loss kept, early
stopping, and `--resume` from the last checkpoint after an interruption. Runs unchanged under
`accelerate launch` / `torchrun` (the trainer reads the distributed environment).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from leadre.config import Params
from leadre.prompts import MAIN_TASK
from leadre.sids.build import sid_vocabulary
from leadre.train import common
from leadre.train.data import SFT_COLUMNS, corpus, load_split, tokenized_prompt_completion
from leadre.train.model import (
    BUILTIN_TINY,
    check_causal_lm,
    load_model,
    parameter_count,
)
from leadre.train.scoring import unigram_loss

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def main_task_unigram_loss(train, valid, vocab: int) -> float:
    """The loss SFT's validation loss must beat: the main task's response token frequencies, prompt ignored."""
    scored = train.select_columns(["task", "labels"])[:]  # not input_ids: converting them costs seconds
    return unigram_loss([labels for labels, task in zip(scored["labels"], scored["task"]) if task == MAIN_TASK],
                        valid.select_columns("labels")[:]["labels"], vocab)


def main_task_response_counts(train) -> pd.Series:
    """ad id → how often it answers a main-task training pair: the prior the model learns, which ranking corrects
    for popularity shift (leadre/decode/prior.py)."""
    rows = train.select_columns(["task", "target_ad_id"]).to_pandas()
    return rows.loc[rows["task"] == MAIN_TASK, "target_ad_id"].astype("int64").value_counts().sort_index()


def run_sft(params: Params, resume: bool = False) -> dict[str, Any]:
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    from leadre.train import checkpointing, processes, progress  # import transformers

    common.prepare_process(params)
    main = processes.is_main_process()
    cfg = params.sft
    if params.model.base_model != BUILTIN_TINY:
        check_causal_lm(params.model.base_model)  # before any data is read: a wrong path fails at once
    checkpoints = params.path(cfg.checkpoint_dir)
    resume_from = checkpointing.prepare_checkpoints(checkpoints, resume)
    train = load_split(params, "sft", "train", [*SFT_COLUMNS, "task", "target_ad_id"], cfg.max_train_examples,
                       cfg.seed)
    responses = main_task_response_counts(train)
    train = train.remove_columns("target_ad_id")
    valid = load_split(params, "sft", "valid", SFT_COLUMNS, cfg.max_eval_examples, cfg.seed)
    sid_tokens = sid_vocabulary(params.sids)
    model, tokenizer = load_model(params.model, corpus(train, params.model.tiny.tokenizer_corpus_rows), sid_tokens,
                                  cfg.seed, tokenizer_folder=resume_from)
    # the longest silent part of the set-up (~35 s for the default world's 50k rows on 2 cores): say what it is
    log.info("sft: tokenising %d train and %d valid rows", len(train), len(valid))
    train = tokenized_prompt_completion(train, tokenizer, cfg.completion_only_loss)
    valid = tokenized_prompt_completion(valid, tokenizer, cfg.completion_only_loss) if len(valid) else valid
    baseline = main_task_unigram_loss(train, valid, len(tokenizer)) if main and len(valid) else None
    train = train.remove_columns("task")
    use_lora = common.lora_enabled(cfg.lora, params.model)
    peft = (common.lora_config(cfg.lora, common.new_token_ids(tokenizer, sid_tokens), common.tied(model))
            if use_lora else None)
    args = SFTConfig(**common.trainer_arguments("sft", cfg, checkpoints, has_eval=len(valid) > 0), run_name="sft",
                     completion_only_loss=cfg.completion_only_loss)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=valid if len(valid) else None,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[checkpointing.MarkCheckpointComplete(),
                   *([EarlyStoppingCallback(cfg.early_stopping_patience)] if cfg.early_stopping_patience else [])])
    progress.readable_progress(trainer, "sft")
    if common.tied(model):
        progress.quiet_tied_head_reload()
    inputs = {"prompts": params.path(params.prompts.out_dir), "sids": params.path(params.sids.out_dir)}
    with common.main_process_run(params, "sft", inputs) as run:
        if run is not None:
            import mlflow

            mlflow.log_params({"leadre.base_model": params.model.base_model, "leadre.lora": use_lora,
                               "leadre.train_rows": len(train), "leadre.eval_rows": len(valid),
                               "leadre.parameters": parameter_count(model), "leadre.processes": args.world_size,
                               **common.reproducibility_facts()})
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume_from)
        seconds = time.perf_counter() - started
        # num_input_tokens_seen is summed over all ranks: the rate is the whole group's
        metrics = {"train_loss": result.training_loss, "train_seconds": seconds,
                   "train_tokens_per_second": trainer.state.num_input_tokens_seen / seconds
                   if trainer.state.num_input_tokens_seen else 0.0,
                   "epochs": trainer.state.epoch or 0.0, "global_step": trainer.state.global_step}
        if len(valid):
            evaluation = trainer.evaluate()  # every rank: evaluation is split across them like training
            metrics["eval_loss"] = evaluation["eval_loss"]
            metrics["eval_perplexity"] = math.exp(min(evaluation["eval_loss"], 50))
            if main:
                metrics["eval_unigram_baseline_loss"] = baseline
        if run is not None:
            final = trainer.model.merge_and_unload() if use_lora else trainer.model
            common.finish_on_main(params, cfg, "sft", final, tokenizer, {
                "lora_merged": use_lora, "sid_tokens": len(sid_tokens)}, metrics, trainer.args, response_counts=responses)
    processes.finish()
    return metrics
