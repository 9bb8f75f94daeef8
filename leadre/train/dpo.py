"""`leadre dpo`: direct preference optimisation from the SFT model towards ads of higher business value.

Each pair's chosen ad is one the user engaged with; the rejected ad a live ad of lower eCPM (mostly from the same
intent, so the model learns value among relevant ads rather than relevance alone). The SFT model is the starting
point and the reference: with LoRA the reference is the adapter switched off (no second copy in memory), without it
TRL keeps a frozen copy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from leadre.bundle import read_response_counts
from leadre.config import Params
from leadre.sids.build import sid_vocabulary
from leadre.train import common
from leadre.train.data import DPO_COLUMNS, load_split
from leadre.train.model import load_trained, parameter_count
from leadre.train.scoring import preference_accuracy

log = logging.getLogger(__name__)


def run_dpo(params: Params, resume: bool = False) -> dict[str, Any]:
    from trl import DPOConfig, DPOTrainer

    from leadre.train import checkpointing, processes, progress  # import transformers

    common.prepare_process(params)
    main = processes.is_main_process()
    cfg = params.dpo
    checkpoints = params.path(cfg.checkpoint_dir)
    resume_from = checkpointing.prepare_checkpoints(checkpoints, resume)
    sft_dir = params.path(params.sft.out_dir)
    model, tokenizer = load_trained(sft_dir)
    train = load_split(params, "dpo", "train", DPO_COLUMNS, cfg.max_train_examples, cfg.seed)
    valid = load_split(params, "dpo", "valid", DPO_COLUMNS, cfg.max_eval_examples, cfg.seed)
    use_lora = common.lora_enabled(cfg.lora, params.model)
    args = DPOConfig(**common.trainer_arguments("dpo", cfg, checkpoints, has_eval=len(valid) > 0), beta=cfg.beta,
                     loss_type=[cfg.loss_type], run_name="dpo")
    inputs = {"prompts": params.path(params.prompts.out_dir), "sft_model": sft_dir}
    with common.main_process_run(params, "dpo", inputs) as run:
        if run is not None:
            import mlflow

            mlflow.log_params({"leadre.lora": use_lora, "leadre.train_rows": len(train),
                               "leadre.eval_rows": len(valid), "leadre.parameters": parameter_count(model),
                               "leadre.processes": args.world_size, **common.reproducibility_facts()})
        # the SFT model's preference accuracy, before DPO changes the weights, is the figure DPO has to beat (a
        # plain forward pass, not a collective step: rank 0 alone scores it)
        before = preference_accuracy(model, tokenizer, valid, cfg.batch_size) if main and len(valid) else {}
        peft = (common.lora_config(cfg.lora, common.new_token_ids(tokenizer, sid_vocabulary(params.sids)),
                                   common.tied(model)) if use_lora else None)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train,
                             eval_dataset=valid if len(valid) else None, processing_class=tokenizer, peft_config=peft,
                             callbacks=[checkpointing.MarkCheckpointComplete()])
        progress.readable_progress(trainer, "dpo")
        if common.tied(model):
            progress.quiet_tied_head_reload()
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume_from)
        seconds = time.perf_counter() - started
        final = trainer.model.merge_and_unload() if use_lora else trainer.model
        metrics: dict[str, float] = {"train_loss": result.training_loss, "train_seconds": seconds,
                                     "train_tokens_per_second": trainer.state.num_input_tokens_seen / seconds,
                                     "global_step": trainer.state.global_step}
        if len(valid):
            evaluation = trainer.evaluate()  # every rank: evaluation is split across them like training
            metrics.update({key.removeprefix("eval_").replace("/", "_"): value for key, value in evaluation.items()
                            if key.startswith("eval_rewards/") or key == "eval_loss"})
            if main:
                after = preference_accuracy(final, tokenizer, valid, cfg.batch_size)
                metrics.update({f"sft_{k}": v for k, v in before.items()})
                metrics.update({f"dpo_{k}": v for k, v in after.items()})
        if run is not None:
            common.finish_on_main(params, cfg, "dpo", final, tokenizer, {
                "lora_merged": use_lora, "beta": cfg.beta, "loss_type": cfg.loss_type},
                metrics, trainer.args, response_counts=read_response_counts(sft_dir))  # the SFT model's prior
    processes.finish()
    return metrics
