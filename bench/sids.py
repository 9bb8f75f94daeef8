"""`python -m bench.sids [--scale 1m]`: semantic IDs for the ads of a world scale (200k at 1m), timed per stage.

Our step (`run_build_sids` with rq_kmeans, cold embedding cache) runs first; then, in the same process and on the
same texts and embeddings, two baselines:
- encode: the bare transformers forward pass (tokenise in input order, forward, mean-pool) with no cache, no
  de-duplication and no length-sorted batching;
- quantise: scikit-learn KMeans per level on the residuals (same levels, codebook size, iterations, k-means++ init).
Peak RSS per stage comes from a sampling thread (the whole process's RSS, model and data included), so a stage's
figure is the highest the process reached while it ran.

Only ads are needed: the world is generated with the scale's ad count and the tiny scale's users, contents and
queries (ads depend on their own random stream and the ad count only, so they are the scale's ads), and written as a
data/validated-style folder without running the Great Expectations suites, which this benchmark does not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from bench import save_results
from leadre.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
RSS_SAMPLE_SECONDS = 0.05


class RssSampler:
    """Samples this process's RSS in a thread; `peak(start, end)` is the highest sample in a time window."""

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((time.perf_counter(), self._process.memory_info().rss))
            self._stop.wait(RSS_SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        inside = [rss for t, rss in self._samples if start <= t <= end]
        return max(inside) if inside else self._process.memory_info().rss


def make_world(params: Params, scale: str, validated_dir: Path) -> int:
    """Write the scale's ads (plus a tiny rest of the world) as a validated-style folder; returns the ad count."""
    from leadre.data.generate import generate_world
    from leadre.data.tables import write_tables

    scales = params.world.scales
    size = scales["tiny"].model_copy(update={"ads": scales[scale].ads})
    world = generate_world(params.world, params.data.snapshot_time, size)
    write_tables(world.tables(), validated_dir, {"source": "bench.sids", "scale": scale})
    return len(world.ads)


def baseline_encode(folder: Path, texts: list[str], batch_size: int) -> np.ndarray:
    """The floor: the model's forward pass over every text in input order, as a minimal script would run it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy())
    return np.concatenate(out)


def baseline_quantise(embeddings: np.ndarray, params: Params) -> np.ndarray:
    """Residual k-means with scikit-learn's KMeans at each level."""
    from sklearn.cluster import KMeans

    sids = params.sids
    residual = embeddings.astype(np.float32).copy()
    codes = np.empty((len(residual), sids.levels), dtype=np.int64)
    for level in range(sids.levels):
        model = KMeans(sids.codebook_size, init="k-means++", n_init=1, max_iter=sids.kmeans_iterations,
                       random_state=sids.seed + level).fit(residual)
        codes[:, level] = model.labels_
        residual -= model.cluster_centers_[model.labels_].astype(np.float32)
    return codes


def timed(sampler: RssSampler, func: Callable[[], Any]) -> tuple[Any, float, int]:
    start = time.perf_counter()
    result = func()
    end = time.perf_counter()
    return result, end - start, sampler.peak(start, end)


def run(scale: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from leadre.data.tables import read_tables
    from leadre.sids.build import ad_texts, run_build_sids
    from leadre.sids.encoder import embed_texts, resolve_encoder_dir

    with tempfile.TemporaryDirectory(prefix="leadre-bench-sids-") as tmp:
        root = Path(tmp)
        raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        params = load_params(root / "params.yaml", {"sids.method": "rq_kmeans", **overrides})
        ads = make_world(params, scale, params.path(params.data.validated_dir))
        print(f"{ads:,} ads written; building S-IDs…", flush=True)
        with RssSampler() as sampler:
            start = time.perf_counter()
            report = run_build_sids(params)
            end = time.perf_counter()
            encode_end = start + report["seconds"]["encode"]
            quantise_end = encode_end + report["seconds"]["quantise"]
            ours = {
                "encode": (report["seconds"]["encode"], sampler.peak(start, encode_end)),
                "quantise": (report["seconds"]["quantise"], sampler.peak(encode_end, quantise_end)),
                "total": (end - start, sampler.peak(start, end)),
            }
            # Printed at once: the baselines take as long again, and a run stopped during them keeps these figures.
            print(json.dumps({"ours": ours, "report": report}), flush=True)
            print("ours done; baseline encode…", flush=True)
            texts = ad_texts(read_tables(params.path(params.data.validated_dir), names=("ads",))["ads"]
                             .sort_values("ad_id"))
            folder = resolve_encoder_dir(params.sids.encoder, params.root)
            _, encode_s, encode_rss = timed(sampler, lambda: baseline_encode(folder, texts, params.sids.batch_size))
            embeddings = embed_texts(texts, params.sids.encoder, params.sids.batch_size,
                                     params.path(params.sids.embeddings_cache), params.root, progress=False).vectors
            print("baseline quantise…", flush=True)
            _, quantise_s, quantise_rss = timed(sampler, lambda: baseline_quantise(embeddings, params))
        baseline = {"encode": (encode_s, encode_rss), "quantise": (quantise_s, quantise_rss),
                    "total": (encode_s + quantise_s, max(encode_rss, quantise_rss))}
    return {"scale": scale, "ads": ads, "overrides": overrides, "cpus": os.cpu_count(),
            "report": {k: report[k] for k in ("ads", "live_ads", "collision_rate", "max_collision_group",
                                             "utilisation", "reconstruction", "encoded_texts", "cached_texts")},
            "stages": [{"stage": stage, "seconds": ours[stage][0], "peak_bytes": ours[stage][1],
                        "baseline_seconds": baseline[stage][0], "baseline_peak_bytes": baseline[stage][1]}
                       for stage in ("encode", "quantise", "total")]}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['ads']:,} ads ({result['scale']} scale), {result['cpus']} CPUs; baseline: bare transformers "
             f"forward pass (encode), scikit-learn KMeans per level (quantise)", "",
             "| stage | seconds | peak RSS GiB | baseline seconds | baseline peak RSS GiB | × baseline time |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["stages"]:
        lines.append(f"| {row['stage']} | {row['seconds']:.1f} | {row['peak_bytes'] / 2**30:.2f} | "
                     f"{row['baseline_seconds']:.1f} | {row['baseline_peak_bytes'] / 2**30:.2f} | "
                     f"{row['seconds'] / row['baseline_seconds']:.2f} |")
    r = result["report"]
    lines += ["", f"collision rate {r['collision_rate']:.2%} (largest group {r['max_collision_group']}), "
              f"relative reconstruction error {r['reconstruction']['relative_error']:.3f}, "
              f"{r['encoded_texts']:,} texts encoded ({r['cached_texts']:,} duplicates served from cache)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sids", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1m", help="world scale whose ad count to use (1m: 200k ads)")
    parser.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. -S sids.codebook_size=64")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}
    result = run(args.scale, overrides)
    print(table(result))
    print(f"\nsaved {save_results('sids', result)}")


if __name__ == "__main__":
    main()
