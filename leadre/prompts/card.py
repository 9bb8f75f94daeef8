"""The prompts dataset's card, and the merge of a sharded build (`leadre prompts build --merge n`).

The card (README.md with the YAML header that `datasets.load_dataset` reads, card.json for DVC and MLflow) is
arithmetic over each chunk's numbers: row counts, prompt-token lengths, recent events kept, intents. A chunk's
numbers travel with its parts (`chunks.json`, `chunks.npz` in a shard's folder), so the merge reads no table and
renders nothing: it links the shards' files into place and writes the card. This module imports numpy and YAML
only (no pandas, pyarrow or torch), so a merge process starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from leadre.config import Params, PromptParams
from leadre.io import atomic_dir, read_json, write_json
from leadre.prompts import SPLITS
from leadre.sharding import parts_dir, shard_dirs

log = logging.getLogger("leadre.prompts.build")  # one logger for the step, whichever module writes the line
FILES = {"sft": ("train", "valid", "test"), "dpo": ("train", "valid")}


def merge_prompts(params: Params, shards: int) -> dict:
    """prompts.out_dir from the parts of `shards` shards (`leadre prompts build --shard i/n`): their chunk files are
    hard-linked in and the dataset card written over all of them; then the parts go. It reads no table: linking
    and the card's arithmetic are all that is left to one process."""
    started = time.perf_counter()
    out_dir = params.path(params.prompts.out_dir)
    folders = shard_dirs(out_dir, shards)
    with atomic_dir(out_dir) as tmp:
        chunks = []
        for folder in folders:
            shard_chunks, intents = read_chunk_stats(folder)
            chunks += shard_chunks
            for part in sorted(folder.rglob("*.parquet")):
                target = tmp / part.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(part, target)  # a link, not a move: a failed merge leaves the shards' parts as they were
        chunks.sort(key=lambda chunk: chunk["chunk"])  # the unsharded run's order, so the card is the same bytes
        card = write_card(tmp, chunks, intents, params.prompts)
    shutil.rmtree(parts_dir(out_dir), ignore_errors=True)
    card = log_card(card, started)
    card["shards"] = shards
    return card


def write_card(out: Path, chunks: list[dict], intents: np.ndarray, settings: PromptParams) -> dict:
    """The dataset card, over every chunk."""
    rows = sum_rows(chunks)
    tokens = {split: [t for r in chunks for t in r["tokens"][split]] for split in SPLITS}
    events = {split: [e for r in chunks for e in r["events"][split]] for split in SPLITS}
    intent_counts = np.sum([r["intents"] for r in chunks], axis=0) if chunks else np.zeros(len(intents))
    card = _card(rows, tokens, events, intent_counts, intents, settings)
    write_json(out / "card.json", card)
    (out / "README.md").write_text(_card_markdown(card), encoding="utf-8")
    return card


def log_card(card: dict, started: float) -> dict:
    """To the log and the active MLflow run; the returned card gains the step's seconds."""
    _log_to_mlflow(card)
    # the wall time is returned and logged, never written into the output: same inputs, same bytes (DVC hashes it)
    card["seconds"] = round(time.perf_counter() - started, 2)
    log.info("prompts: %s in %.1fs", card["counts"], card["seconds"])
    return card


def sum_rows(chunks: list[dict]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for chunk in chunks:
        for name, n in chunk["rows"].items():
            rows[name] = rows.get(name, 0) + n
    return rows


CHUNK_STATS = "chunks.json"  # a shard's per-chunk numbers for the merged card (token and event counts: .npz)


def write_chunk_stats(folder: Path, chunks: list[dict], intents: np.ndarray) -> None:
    arrays = {}
    for r in chunks:
        for kind in ("tokens", "events"):
            for split in SPLITS:
                parts = r[kind][split]
                arrays[f"{kind}.{r['chunk']}.{split}"] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    np.savez(folder / "chunks.npz", **arrays)
    write_json(folder / CHUNK_STATS, {"intents": intents.tolist(), "chunks": [
        {"chunk": r["chunk"], "rows": r["rows"], "intents": r["intents"].tolist()} for r in chunks]})


def read_chunk_stats(folder: Path) -> tuple[list[dict], np.ndarray]:
    stats = read_json(folder / CHUNK_STATS)
    chunks = stats["chunks"]
    with np.load(folder / "chunks.npz") as arrays:
        for r in chunks:
            for kind in ("tokens", "events"):
                r[kind] = {split: [a] if len(a := arrays[f"{kind}.{r['chunk']}.{split}"]) else []
                           for split in SPLITS}
            r["intents"] = np.asarray(r["intents"], dtype=np.int64)
    return chunks, np.asarray(stats["intents"], dtype=object)


def _card(rows: dict, tokens: dict, events: dict, intent_counts, intents, settings) -> dict:
    """The dataset card's numbers. No wall times or paths: the card is inside a DVC output, hashed with it."""
    lengths = {split: np.concatenate(parts) if parts else np.zeros(0) for split, parts in tokens.items()}
    percentiles = {split: ({f"p{q}": int(np.percentile(v, q)) for q in (50, 90, 99)} | {"max": int(v.max())}
                           if len(v) else {}) for split, v in lengths.items()}
    shown = {split: np.concatenate(parts) if parts else np.zeros(0) for split, parts in events.items()}
    # how much of the short-term facet survives the token bound: the share of prompts left with no recent event
    recent = {split: {"none_share": round(float((v == 0).mean()), 4), "p10": int(np.percentile(v, 10)),
                      "p50": int(np.percentile(v, 50)), "p90": int(np.percentile(v, 90))} if len(v) else {}
              for split, v in shown.items()}
    total = max(int(intent_counts.sum()), 1)
    distribution = {str(intents[i]): round(int(intent_counts[i]) / total, 4) for i in np.argsort(-intent_counts)
                    if intent_counts[i] > 0}
    return {"counts": dict(sorted(rows.items())),
            "prompt_tokens": percentiles, "max_prompt_tokens": settings.max_prompt_tokens,
            "recent_events": recent, "train_intent_share": distribution}


def _card_markdown(card: dict) -> str:
    configs = [{"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}/*.parquet"}
                                                    for split in splits if f"{name}/{split}" in card["counts"]]}
               for name, splits in FILES.items()]
    header = yaml.safe_dump({"configs": configs, "language": ["en"], "pretty_name": "LEADRE prompts"}, sort_keys=False)
    lines = ["---", header.strip(), "---", "", "# LEADRE prompts", "",
             "Intent-aware <prompt, response> pairs (main task), auxiliary alignment tasks and DPO preference pairs,",
             "built by `leadre prompts build` (leadre/prompts/). Responses are semantic IDs of ads.", "",
             "| folder | rows |", "|---|---:|"]
    lines += [f"| {name}/ | {n:,} |" for name, n in card["counts"].items()]
    lines += ["", f"Prompt tokens of the main task (bound: {card['max_prompt_tokens']}):", "",
              "| split | p50 | p90 | p99 | max |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {p.get('p50', '')} | {p.get('p90', '')} | {p.get('p99', '')} | {p.get('max', '')} |"
              for s, p in card["prompt_tokens"].items()]
    lines += ["", "Recent events the main task's prompts keep (the short-term facet, after the token bound):", "",
              "| split | none | p10 | p50 | p90 |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {r['none_share']:.1%} | {r['p10']} | {r['p50']} | {r['p90']} |"
              for s, r in card["recent_events"].items() if r]
    lines += ["", "Intents of the train pairs:", "", "| intent | share |", "|---|---:|"]
    lines += [f"| {i} | {share:.1%} |" for i, share in card["train_intent_share"].items()]
    return "\n".join(lines) + "\n"


def _log_to_mlflow(card: dict) -> None:
    """Log the card's numbers to the active MLflow run, if a caller (the training pipeline) opened one."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    mlflow.log_metrics({f"prompts.rows.{k.replace('/', '.')}": v for k, v in card["counts"].items()})
    for split, p in card["prompt_tokens"].items():
        mlflow.log_metrics({f"prompts.tokens.{split}.{k}": v for k, v in p.items()})
    for split, r in card["recent_events"].items():
        mlflow.log_metrics({f"prompts.recent_events.{split}.{k}": v for k, v in r.items()})
