"""`python -m bench.gpu_train`: SFT throughput of a random-init 0.5B Qwen2 on one GPU (for the `device` tool).

The model is Qwen2.5-0.5B's shape built from a config (no weights are downloaded), sequence length 1024, bf16, the
same TRL SFTTrainer our step uses. Prints tokens/s and MFU: achieved FLOP/s over the GPU's dense bf16 peak, with
training FLOPs per token ≈ 6 × parameters + 12 × layers × hidden × sequence (attention).
"""

from __future__ import annotations

import argparse
import tempfile
import time

# Dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on CPU: checks the script, not the GPU")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Qwen2Config, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from leadre.train.model import train_tokenizer

    shape = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2)
    if args.smoke:
        shape = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1)
    config = Qwen2Config(**shape, max_position_embeddings=32_768, tie_word_embeddings=True)
    bf16 = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32,
                                             attn_implementation="sdpa")
    # the collator needs a tokenizer for its pad id only; the rows are token ids already
    tokenizer = train_tokenizer(["padding only"], 300)
    params = sum(p.numel() for p in model.parameters())
    rows = Dataset.from_dict({"input_ids": torch.randint(0, config.vocab_size,
                                                          (args.batch * (args.steps + args.warmup), args.seq)).tolist()})

    class Timer(TrainerCallback):
        started = None

        def on_step_begin(self, a, state, control, **kw):
            if state.global_step == args.warmup:
                sync()
                Timer.started = time.perf_counter()

    def sync() -> None:
        if bf16:
            torch.cuda.synchronize()

    sft = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=args.steps
                    + args.warmup, bf16=bf16, learning_rate=1e-4, max_length=args.seq, report_to="none",
                    save_strategy="no", logging_steps=10, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=rows, processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    sync()
    seconds = time.perf_counter() - Timer.started
    tokens_per_second = args.steps * args.batch * args.seq / seconds
    flops_per_token = 6 * params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    name = torch.cuda.get_device_name() if bf16 else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    print(f"| GPU | params | seq | batch | tokens/s | MFU |\n|---|---:|---:|---:|---:|---:|\n"
          f"| {name} | {params / 1e6:.0f}M | {args.seq} | {args.batch} | {tokens_per_second:,.0f} | "
          f"{tokens_per_second * flops_per_token / peak:.1%} |" if peak else f"{tokens_per_second:,.0f} tokens/s")


if __name__ == "__main__":
    main()
