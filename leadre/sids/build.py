"""Build and extend the ad → semantic ID table: the step behind `leadre sids build` and `leadre sids assign`.

build: embed every ad's text (cached by content hash) → fit residual codebooks → `levels` codes per ad → a last
disambiguation token so every ad's S-ID is unique → table, frozen codebooks and a report, written as one folder
atomically (file names: leadre/bundle.py). Generation builds the trie of live ads from the table.

assign: new ads get codes from the frozen codebooks (no retraining) and the next free disambiguation index of their
prefix, so existing S-IDs, which a trained model has learned, never change; liveness is refreshed for all ads.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from leadre.bundle import SID_REPORT_FILE, SID_TABLE
from leadre.bundle import read_sid_table as load_sid_table
from leadre.config import ConfigError, Params, SidsParams
from leadre.data.tables import read_tables
from leadre.io import atomic_dir, read_json, write_json
from leadre.sharding import Shard
from leadre.sids.encoder import EmbeddingResult, embed_texts, encoder_fingerprint, resolve_encoder_dir
from leadre.sids.quantize import Quantizer, load_quantizer, make_quantizer, save_quantizer
from leadre.sids.trie import level_letter, sid_token, sid_tokens

log = logging.getLogger(__name__)

# Written by earlier versions beside the table; nothing reads it (generation builds its trie from the table's live
# rows), so `sids assign` drops it rather than carry a stale copy.
LEGACY_TRIE_FILE = "trie.json"
LIVE_STATUS = "active"
MLFLOW_PREFIX = "sids"
# Facts about the run, not the S-IDs: a warm cache or a busy machine changes them for the same data. They are
# returned and logged but kept out of report.json, so the output folder is the same bytes for the same inputs.
RUN_FACTS = ("encoded_texts", "cached_texts", "seconds")

__all__ = ["SidCollisionError", "ad_texts", "disambiguate", "load_sid_table", "merge_sids", "run_assign_sids", "run_build_sids",
           "sid_tokens", "sid_vocabulary"]


class SidCollisionError(ConfigError):
    """More ads share one code prefix than the disambiguation level has tokens: the params do not fit the data."""


# ---------------------------------------------------------------------------------------------------------------
# Tokens and the table


def level_columns(levels: int) -> list[str]:
    """Code columns of the table: level_0 … level_{levels}, the last one the disambiguation index."""
    return [f"level_{i}" for i in range(levels + 1)]


def sid_vocabulary(sids: SidsParams) -> list[str]:
    """Every S-ID token the LLM may need: codebook_size per codebook level, then max_collisions for the last level."""
    tokens = [sid_token(level, code) for level in range(sids.levels) for code in range(sids.codebook_size)]
    return tokens + [sid_token(sids.levels, index) for index in range(sids.max_collisions)]


def ad_texts(ads: pd.DataFrame) -> list[str]:
    """What the encoder reads per ad: name, description and industry (the fields LEADRE embeds)."""
    text = (ads["title"].astype(str) + ". " + ads["description"].astype(str) + " Industry: "
            + ads["industry"].astype(str))
    return text.tolist()


def sid_strings(codes: np.ndarray) -> np.ndarray:
    """(n, levels + 1) codes → S-ID strings, column by column (vectorised: 200k ads in well under a second)."""
    text = pd.Series([""] * len(codes), dtype=object)
    for level in range(codes.shape[1]):
        text = text + f"<{level_letter(level)}_" + pd.Series(codes[:, level]).astype(str) + ">"
    return text.to_numpy(dtype=object)


def sid_table(ad_ids: np.ndarray, codes: np.ndarray, live: np.ndarray) -> pd.DataFrame:
    columns = {"ad_id": ad_ids.astype(np.int64), "sid": sid_strings(codes), "live": live.astype(bool)}
    columns.update({name: codes[:, i].astype(np.int64) for i, name in enumerate(level_columns(codes.shape[1] - 1))})
    return pd.DataFrame(columns).sort_values("ad_id", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# Disambiguation and statistics


def _prefix_groups(codes: np.ndarray, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ordered by (codes, ad_id), and for each position of that order its rank inside its code group."""
    order = np.lexsort((ad_ids, *codes.T[::-1]))
    ordered = codes[order]
    starts = np.ones(len(codes), dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(1)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(codes)), 0))
    return order, np.arange(len(codes)) - group_start


def disambiguate(codes: np.ndarray, ad_ids: np.ndarray, max_collisions: int,
                 first_free: np.ndarray | None = None) -> np.ndarray:
    """Last-level index per ad: 0, 1, 2, … among ads with the same codes, by ad_id, from `first_free` per row.

    Ordering by ad_id makes the result independent of the row order the data arrived in. Raises SidCollisionError
    when a prefix needs more indices than the disambiguation level has tokens.
    """
    if not len(codes):
        return np.empty(0, dtype=np.int64)
    order, rank_in_order = _prefix_groups(codes, ad_ids)
    index = np.empty(len(codes), dtype=np.int64)
    index[order] = rank_in_order
    if first_free is not None:
        index += first_free
    overflow = index >= max_collisions
    if overflow.any():
        worst = int(np.argmax(index))
        prefix = "".join(sid_token(level, code) for level, code in enumerate(codes[worst]))
        raise SidCollisionError(
            f"{int(overflow.sum())} ad(s) do not fit: the code prefix {prefix} is shared by {index[worst] + 1} ads "
            f"but sids.max_collisions = {max_collisions}. Raise sids.codebook_size or sids.levels (finer codes) or "
            f"sids.max_collisions (more disambiguation tokens), then run `leadre sids build`")
    return index


def collision_stats(codes: np.ndarray) -> tuple[float, int]:
    """(share of ads whose codes another ad shares, size of the largest such group), before disambiguation."""
    if not len(codes):
        return 0.0, 0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean()), int(counts.max())


def utilisation(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Share of each level's codebook entries that some ad uses: low values mean wasted vocabulary."""
    return {f"level_{level}": len(np.unique(codes[:, level])) / codebook_size for level in range(codes.shape[1])}


def reconstruction_error(embeddings: np.ndarray, reconstructed: np.ndarray) -> dict[str, float]:
    """MSE of the quantised embeddings, and the same relative to the embeddings' own variance (1.0 = no better than
    predicting the mean embedding)."""
    squared_error = ((embeddings - reconstructed) ** 2).sum(dtype=np.float64)
    spread = ((embeddings - embeddings.mean(0)) ** 2).sum(dtype=np.float64)
    return {"mse": float(squared_error / embeddings.size),
            "relative_error": float(squared_error / spread) if spread > 0 else 0.0}


# ---------------------------------------------------------------------------------------------------------------
# Steps


@dataclass
class _Ads:
    ids: np.ndarray
    live: np.ndarray
    texts: list[str]


def _read_ads(params: Params) -> _Ads:
    ads = read_tables(params.path(params.data.validated_dir), names=("ads",))["ads"]
    if ads.empty:
        raise ConfigError(f"no ads in {params.path(params.data.validated_dir)}: nothing to build S-IDs for")
    ads = ads.sort_values("ad_id", kind="stable").reset_index(drop=True)
    return _Ads(ads["ad_id"].to_numpy(np.int64), (ads["status"].astype(str) == LIVE_STATUS).to_numpy(), ad_texts(ads))


def _embed(params: Params, texts: list[str]) -> EmbeddingResult:
    sids = params.sids
    return embed_texts(texts, sids.encoder, sids.batch_size, params.path(sids.embeddings_cache), base=params.root,
                       dtype=sids.encoder_dtype)


def log_to_mlflow(report: dict[str, Any]) -> bool:
    """Log the report's numbers as metrics into the active MLflow run, if the caller started one.

    mlflow is only looked up in sys.modules: a run can only be active if the caller imported it, so a plain CLI
    call never pays its multi-second import.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return False
    mlflow.log_metrics(_numbers(report, MLFLOW_PREFIX))
    return True


def _numbers(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(_numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _build_report(params: Params, ads: _Ads, codes: np.ndarray, embedding: EmbeddingResult,
                  quantizer: Quantizer, seconds: dict[str, float]) -> dict[str, Any]:
    sids = params.sids
    collision_rate, largest = collision_stats(codes)
    return {
        "ads": int(len(ads.ids)),
        "live_ads": int(ads.live.sum()),
        "method": sids.method,
        "levels": sids.levels,
        "codebook_size": sids.codebook_size,
        "max_collisions": sids.max_collisions,
        "collision_rate": collision_rate,
        "max_collision_group": largest,
        "utilisation": utilisation(codes, sids.codebook_size),
        "reconstruction": reconstruction_error(embedding.vectors, quantizer.decode(codes)),
        "encoder": sids.encoder,
        "encoder_id": embedding.encoder_id,
        "embedding_dim": int(embedding.vectors.shape[1]),
        "encoded_texts": embedding.encoded,
        "cached_texts": embedding.cached,
        "seconds": seconds,
    }


def run_build_sids(params: Params, shard: Shard | None = None) -> dict[str, Any]:
    """Embed → fit codebooks → unique S-IDs; writes sids.out_dir as one folder, atomically. Returns the report.

    With `shard` (i/n): only embed the ads that shard owns into the embeddings cache, the expensive part. The merge
    is this step unsharded: every text is then cached, so it only quantises, and a warm cache gives the bytes a
    cold one gives (leadre/sids/encoder.py), so the S-IDs are those of one unsharded run.
    """
    started = time.perf_counter()
    sids = params.sids
    ads = _read_ads(params)
    if shard is not None:
        owned = shard.owns(ads.ids)
        embedding = _embed(params, [text for text, own in zip(ads.texts, owned) if own])
        summary = {"shard": str(shard), "ads": int(owned.sum()), "encoded_texts": embedding.encoded,
                   "cached_texts": embedding.cached, "seconds": time.perf_counter() - started}
        log.info("S-ID shard %s: %s", shard, summary)
        return summary
    embedding = _embed(params, ads.texts)
    encoded_at = time.perf_counter()
    quantizer = make_quantizer(sids)
    quantizer.fit(embedding.vectors)
    codes = quantizer.encode(embedding.vectors)
    quantised_at = time.perf_counter()
    suffix = disambiguate(codes, ads.ids, sids.max_collisions)
    table = sid_table(ads.ids, np.column_stack([codes, suffix]), ads.live)
    seconds = {"encode": encoded_at - started, "quantise": quantised_at - encoded_at}
    report = _build_report(params, ads, codes, embedding, quantizer, seconds)
    out_dir = params.path(sids.out_dir)
    with atomic_dir(out_dir) as tmp:
        table.to_parquet(tmp / SID_TABLE, index=False)
        save_quantizer(quantizer, tmp, int(embedding.vectors.shape[1]),
                       {"encoder": sids.encoder, "encoder_id": embedding.encoder_id,
                        "max_collisions": sids.max_collisions})
        write_json(tmp / SID_REPORT_FILE, {k: v for k, v in report.items() if k not in RUN_FACTS})
    seconds["total"] = time.perf_counter() - started
    log.info("S-IDs for %d ads (%d live) in %s: collision rate %.2f%% before disambiguation",
             report["ads"], report["live_ads"], out_dir, 100 * report["collision_rate"])
    log_to_mlflow(report)
    return report


def merge_sids(params: Params, shards: int) -> dict[str, Any]:
    """After `shards` shards filled the embeddings cache: the whole step, which then only quantises."""
    report = run_build_sids(params)
    if report["encoded_texts"]:
        log.warning("S-ID merge encoded %d texts the %d shard(s) had not cached (an ad changed in between?)",
                    report["encoded_texts"], shards)
    return report | {"shards": shards}


def _check_same_encoder(params: Params, meta: dict) -> None:
    """Frozen codebooks only make sense in the embedding space they were fitted in."""
    folder = resolve_encoder_dir(params.sids.encoder, params.root)
    current = encoder_fingerprint(params.sids.encoder, folder, params.sids.encoder_dtype)
    if current != meta.get("encoder_id"):
        raise ConfigError(f"sids.encoder is {params.sids.encoder!r} (id {current}) but the codebooks in "
                          f"{params.path(params.sids.out_dir)} were fitted with {meta.get('encoder')!r} "
                          f"(id {meta.get('encoder_id')}): run `leadre sids build` to refit them")


def _first_free(table: pd.DataFrame, codes: np.ndarray, levels: int) -> np.ndarray:
    """Per new ad, the next unused disambiguation index of its prefix (one past the highest ever given)."""
    *prefix_columns, last = level_columns(levels)
    existing = table[prefix_columns].to_numpy(np.int64)
    _, group = np.unique(np.vstack([existing, codes]), axis=0, return_inverse=True)
    group = group.ravel()
    first_free = np.zeros(group.max() + 1, dtype=np.int64)
    np.maximum.at(first_free, group[:len(existing)], table[last].to_numpy(np.int64) + 1)
    return first_free[group[len(existing):]]


def run_assign_sids(params: Params) -> dict[str, Any]:
    """Give ads without an S-ID one from the frozen codebooks, refresh liveness, rewrite table + trie atomically.

    Ads that left the validated table stay in the S-ID table (not live): their S-IDs are never handed to another ad,
    so a model trained on them can never point at the wrong ad.
    """
    started = time.perf_counter()
    out_dir = params.path(params.sids.out_dir)
    table = load_sid_table(out_dir)
    quantizer, meta = load_quantizer(out_dir)
    levels = meta["levels"]
    ads = _read_ads(params)
    is_new = ~np.isin(ads.ids, table["ad_id"].to_numpy())
    new_ids = ads.ids[is_new]
    encoded = cached = 0
    if len(new_ids):
        _check_same_encoder(params, meta)
        embedding = _embed(params, [t for t, new in zip(ads.texts, is_new) if new])
        encoded, cached = embedding.encoded, embedding.cached
        codes = quantizer.encode(embedding.vectors)
        suffix = disambiguate(codes, new_ids, params.sids.max_collisions, _first_free(table, codes, levels))
        added = sid_table(new_ids, np.column_stack([codes, suffix]), np.zeros(len(new_ids), dtype=bool))
        table = pd.concat([table, added], ignore_index=True).sort_values("ad_id", kind="stable")
        table = table.reset_index(drop=True)
    table["live"] = np.isin(table["ad_id"].to_numpy(), ads.ids[ads.live])
    report = read_json(out_dir / SID_REPORT_FILE) if (out_dir / SID_REPORT_FILE).is_file() else {}
    assigned = {"assigned": int(len(new_ids)), "ads": int(len(table)), "live_ads": int(table["live"].sum()),
                "encoded_texts": encoded, "cached_texts": cached, "seconds": time.perf_counter() - started}
    report.update(ads=assigned["ads"], live_ads=assigned["live_ads"], last_assign={k: v for k, v in assigned.items() if k not in RUN_FACTS})
    with atomic_dir(out_dir) as tmp:
        for kept in out_dir.iterdir():  # frozen codebooks and weights travel unchanged into the new folder
            if kept.name not in (SID_TABLE, SID_REPORT_FILE, LEGACY_TRIE_FILE) and kept.is_file():
                shutil.copy2(kept, tmp / kept.name)
        table.to_parquet(tmp / SID_TABLE, index=False)
        write_json(tmp / SID_REPORT_FILE, report)
    log.info("assigned S-IDs to %d new ads; %d of %d ads live", assigned["assigned"], assigned["live_ads"],
             assigned["ads"])
    return assigned
