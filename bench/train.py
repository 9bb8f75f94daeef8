"""`python -m bench.train [--rows 512]`: SFT and DPO tokens/s of our steps against bare TRL on the same data and model.

Ours: `run_sft` / `run_dpo` as the CLI runs them (MLflow tracking with system metrics, checkpoints, the saved
bundle). Bare: a plain TRL script (SFTTrainer / DPOTrainer, no tracking, no checkpoints) on the same rows, the same
tokenizer and the same model config and seed, run in the same process right after. Tokens/s counts the non-padding
input tokens the trainer consumed during `train()`; the goal is ours ≥ 0.9 × bare. The workspace needs the
prompts and S-IDs of `make run` (data/prompts, artifacts/sids).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import save_results
from leadre.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]


def _overrides(rows: int, out: Path) -> dict:
    # one evaluation row (0 would mean all): the comparison is the training loop, not what runs between epochs
    common = {"max_train_examples": rows, "max_eval_examples": 1, "epochs": 1}
    overrides = {f"{step}.{key}": value for step in ("sft", "dpo") for key, value in common.items()}
    for step in ("sft", "dpo"):
        overrides[f"{step}.out_dir"] = str(out / step / "model")
        overrides[f"{step}.checkpoint_dir"] = str(out / step / "checkpoints")
        overrides[f"{step}.metrics_file"] = str(out / step / "metrics.json")
    overrides["tracking.tracking_uri"] = f"sqlite:///{out / 'mlruns.db'}"
    overrides["tracking.artifact_root"] = str(out / "mlartifacts")
    return overrides


def _tokens_per_second(trainer, seconds: float) -> float:
    return trainer.state.num_input_tokens_seen / seconds


def bare_sft(params: Params, tokenizer_folder: Path) -> float:
    """The TRL quick-start, nothing else: same rows, tokenizer, model config and seed as our step."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from leadre.train.common import device_arguments
    from leadre.train.data import SFT_COLUMNS, load_split
    from leadre.train.model import build_tiny

    cfg = params.sft
    rows = load_split(params, "sft", "train", SFT_COLUMNS, cfg.max_train_examples, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), padding_side="left")
    model, _ = build_tiny(params.model, tokenizer, cfg.seed)
    args = SFTConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=1, learning_rate=cfg.learning_rate,
                     per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                     activation_checkpointing=cfg.gradient_checkpointing, report_to="none", save_strategy="no",
                     include_num_input_tokens_seen="non_padding", **device_arguments())
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    return _tokens_per_second(trainer, time.perf_counter() - started)


def bare_dpo(params: Params, sft_folder: Path) -> float:
    from trl import DPOConfig, DPOTrainer

    from leadre.train.common import device_arguments
    from leadre.train.data import DPO_COLUMNS, load_split
    from leadre.train.model import load_trained

    cfg = params.dpo
    rows = load_split(params, "dpo", "train", DPO_COLUMNS, cfg.max_train_examples, cfg.seed)
    model, tokenizer = load_trained(sft_folder)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), num_train_epochs=1, learning_rate=cfg.learning_rate,
                     per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, beta=cfg.beta,
                     seed=cfg.seed, activation_checkpointing=cfg.gradient_checkpointing, report_to="none",
                     save_strategy="no", include_num_input_tokens_seen="non_padding", **device_arguments())
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    return _tokens_per_second(trainer, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512, help="training rows for SFT and for DPO")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from leadre.train.dpo import run_dpo
    from leadre.train.sft import run_sft

    with tempfile.TemporaryDirectory() as tmp:
        params = load_params(args.params, _overrides(args.rows, Path(tmp)))
        ours_sft = run_sft(params)["train_tokens_per_second"]
        bare_sft_tps = bare_sft(params, params.path(params.sft.out_dir))
        ours_dpo = run_dpo(params)["train_tokens_per_second"]
        bare_dpo_tps = bare_dpo(params, params.path(params.sft.out_dir))

    rows = [("sft", ours_sft, bare_sft_tps), ("dpo", ours_dpo, bare_dpo_tps)]
    print(f"\n{args.rows} rows per step, model {params.model.base_model}, batch {params.sft.batch_size}\n")
    print("| step | ours tokens/s | bare TRL tokens/s | ours / bare (goal ≥ 0.9) |")
    print("|---|---:|---:|---:|")
    for step, ours, bare in rows:
        print(f"| {step} | {ours:,.0f} | {bare:,.0f} | {ours / bare:.2f} |")
    path = save_results("train", {"rows": args.rows, "results": [
        {"step": s, "ours_tokens_per_second": o, "bare_tokens_per_second": b} for s, o, b in rows]})
    print(f"\nraw figures: {path}")


if __name__ == "__main__":
    main()
