"""`python -m bench.recbole [--scale tiny] [--epochs 25]`: our ID baselines against RecBole's, same split and protocol.

A cross-check, not a test: it installs RecBole in a side environment (RECBOLE_VENV, default /tmp/recbole-venv;
RecBole needs numpy<2, which the platform's own environment does not pin), generates the world at `--scale`,
exports its ad engagements as RecBole atomic files and runs Pop, ItemKNN and SASRec on both sides under
leave-last-out full ranking (`eval_args: {split: {LS: valid_and_test}, order: TO, mode: full}`), then prints
NDCG@10 and HR@10 side by side with the relative difference.

The export is the leave-last-out sequence our protocol uses: each user's first engagement with each ad, in time
order, for users with at least 3 such ads (so both sides score the same users on the same targets; RecBole would
also give a test item to a user with two). Ties in time are broken by adding a millisecond per rank within the user,
so RecBole's sort by time cannot reorder them.

Where the two sides differ on purpose:
- RecBole's general models (Pop, ItemKNN) learn from the train part only (everything before the valid item) and
  then rank the test item; `leadre evaluate` fits ours on everything before the test item, the valid item
  included. The `ours, RecBole fit` rows fit ours on the train part too, so they compare the implementations.
- Hyperparameters: ours are set to RecBole's defaults in the matched rows (Pop: plain counts; ItemKNN: k=100,
  shrink=0). The `ours, params.yaml` rows use the platform's tuned settings (recency-decayed popularity, shrink 20).
- SASRec: RecBole's with CE loss (as ours: full softmax), the same sizes, dropout, learning rate, epochs and maximum
  length; it trains on every prefix of each sequence, ours on each sequence once with a target at every position.
  RecBole picks the epoch with the best valid NDCG@10; ours trains a fixed number of epochs.
- RecBole's Pop miscounts repeated items within a batch (see RUNNER), so it runs with one interaction per batch.

Seen on the tiny world (339 users, 190 ads, 25 SASRec epochs, 2 CPU cores; RecBole 1.2.1, its SASRec ~8 min),
NDCG@10 ours vs RecBole, same fit: ItemKNN 0.2257 vs 0.2216 (+1.9%); Pop 0.0515 vs 0.0445 (+16%, 0.8 standard
errors: many ads tie on a count, and each side breaks ties its own way, ours by ad id); SASRec 0.1400 vs 0.1248
(+12%, one standard error). At 339 users only a gap of two standard errors (~15%) could be called.

Seen on the default world (`--scale default --models Pop,ItemKNN`: 4,366 users, 1,663 ads, 47,365 interactions),
same fit: Pop 0.0277 vs 0.0276 (+0.2%), ItemKNN 0.0977 vs 0.0967 (+1.0%), both inside ±5% and inside one standard
error (0.0020, 0.0035). RecBole's SASRec was not run at this scale: it trains on every prefix of every sequence,
~8 min on the tiny world and hours here on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import save_results

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("RECBOLE_VENV", "/tmp/recbole-venv"))
DATASET = "leadre"
MODELS = ("Pop", "ItemKNN", "SASRec")
K = 10


def install_recbole(venv: Path = VENV) -> Path:
    """The side environment's python, created and filled on first use: torch pinned as the platform pins it (from
    PyPI, so pip's cache serves it), then RecBole with numpy<2."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import numpy, recbole.quick_start; assert int(numpy.__version__.split('.')[0]) < 2"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    # numpy<2: RecBole uses aliases numpy 2 removed; setuptools<81: its quick_start imports ray, which imports
    # pkg_resources, gone from setuptools 81
    subprocess.run(pip + ["recbole", "numpy<2", "setuptools<81"], check=True)
    subprocess.run(check, check=True)
    return python


def leave_out_sequences(events: pd.DataFrame) -> pd.DataFrame:
    """user_id, ad_id, ts (ms) of the first engagement per (user, ad), for users with >= 3 ads, ties broken."""
    from leadre.evaluate.baselines import ad_engagements
    from leadre.prompts.pairs import LEAVE_OUT_MIN_ITEMS

    engaged = ad_engagements(events).drop_duplicates(["user_id", "ad_id"])
    counts = engaged.groupby("user_id")["ad_id"].transform("size")
    engaged = engaged[counts >= LEAVE_OUT_MIN_ITEMS].reset_index(drop=True)
    ms = engaged["ts"].dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    engaged["ts"] = ms + engaged.groupby("user_id").cumcount().to_numpy()  # strictly increasing per user
    return engaged


def write_atomic(sequences: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{DATASET}.inter").open("w") as out:
        out.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, ad, ms in sequences[["user_id", "ad_id", "ts"]].itertuples(index=False):
            out.write(f"{user}\t{ad}\t{ms / 1000:.3f}\n")


def ours(sequences: pd.DataFrame, epochs: int, models: tuple[str, ...] = MODELS) -> dict[str, dict[str, float]]:
    from leadre.config import load_params
    from leadre.evaluate.baselines import (ItemKNN, ItemKNNParams, Popularity, PopularityParams, SASRec,
                                           SASRecParams, engaged_ads)
    from leadre.evaluate.metrics import per_row_metrics
    from leadre.evaluate.run import leave_out_history

    frame = sequences.assign(ts=pd.to_datetime(sequences["ts"], unit="ms", utc=True))
    until_test, until_valid = leave_out_history(frame, "test"), leave_out_history(frame, "valid")
    users = np.sort(frame["user_id"].unique())
    relevant = [np.array([a]) for a in frame.groupby("user_id")["ad_id"].last().reindex(users)]
    exclude = engaged_ads(until_test, users)  # train + valid items, as RecBole masks at test time
    candidates = np.sort(frame["ad_id"].unique())
    b = load_params(REPO / "params.yaml").evaluate.baselines
    sasrec = SASRecParams(**{**b["sasrec"].model_dump(), "epochs": epochs})
    runs = {
        "Pop": [("ours, RecBole fit", Popularity(PopularityParams(half_life_days=None)), until_valid),
                ("ours, as evaluate", Popularity(PopularityParams(half_life_days=None)), until_test),
                ("ours, params.yaml", Popularity(PopularityParams(**b["popularity"].model_dump())), until_test)],
        "ItemKNN": [("ours, RecBole fit", ItemKNN(ItemKNNParams(neighbours=100, shrink=0.0)), until_valid),
                    ("ours, as evaluate", ItemKNN(ItemKNNParams(neighbours=100, shrink=0.0)), until_test),
                    ("ours, params.yaml", ItemKNN(ItemKNNParams(**b["itemknn"].model_dump())), until_test)],
        "SASRec": [("ours, as evaluate", SASRec(sasrec), until_test)],
    }
    out: dict[str, dict[str, float]] = {}
    for model, variants in runs.items():
        if model not in models:
            continue
        for label, recommender, history in variants:
            started = time.perf_counter()
            ids = recommender.fit(history).recommend(users, K, candidates, exclude)
            rows = per_row_metrics(ids, relevant, (K,))
            out[f"{model} | {label}"] = {"ndcg@10": float(rows["ndcg@10"].mean()), "hr@10": float(rows["hr@10"].mean()),
                                         "ndcg@10_se": float(rows["ndcg@10"].std() / np.sqrt(len(rows))),
                                         "seconds": round(time.perf_counter() - started, 1)}
    return out


RUNNER = textwrap.dedent('''
    import json, sys, time
    from recbole.quick_start import run_recbole
    data_path, epochs, wanted = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    common = {"data_path": data_path, "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id",
              "TIME_FIELD": "timestamp", "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
              "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
              "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "seed": 0,
              "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
              "checkpoint_dir": data_path + "/saved", "save_dataset": False, "save_dataloaders": False}
    models = {
        # RecBole's Pop counts with `item_cnt[item] = item_cnt[item] + 1` per batch, which adds 1 per distinct item
        # of a batch however often it occurs there: with the default batch (2048) a small dataset is one batch and
        # every item ties. One interaction per batch, one pass, makes it count interactions.
        "Pop": {"train_batch_size": 1, "epochs": 1},
        "ItemKNN": {"k": 100, "shrink": 0.0},
        "SASRec": {"loss_type": "CE", "train_neg_sample_args": None, "hidden_size": 64, "inner_size": 64,
                   "n_layers": 2, "n_heads": 2, "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
                   "hidden_act": "gelu", "MAX_ITEM_LIST_LENGTH": 50, "learning_rate": 0.003,
                   "train_batch_size": 256, "epochs": epochs, "stopping_step": epochs},
    }
    out = {}
    for model, extra in models.items():
        if model not in wanted:
            continue
        started = time.perf_counter()
        result = run_recbole(model=model, dataset="leadre", config_dict={**common, **extra}, saved=False)
        test = result["test_result"]
        out[model] = {"ndcg@10": float(test["ndcg@10"]), "hr@10": float(test["hit@10"]),
                      "seconds": round(time.perf_counter() - started, 1)}
    print("RESULT " + json.dumps(out))
''')


def recbole(python: Path, data_path: Path, epochs: int, models: tuple[str, ...] = MODELS) -> dict[str, dict[str, float]]:
    script = data_path / "run_recbole.py"
    script.write_text(RUNNER)
    done = subprocess.run([str(python), str(script), str(data_path), str(epochs), ",".join(models)], capture_output=True, text=True,
                          cwd=data_path)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"RecBole failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def report(mine: dict, theirs: dict) -> str:
    # the standard error says how large a difference the number of users can show at all: a gap within about two
    # of them is noise, not a difference between implementations
    lines = [f"| model | run | NDCG@{K} (± s.e.) | HR@{K} | NDCG@{K} vs RecBole | seconds |",
             "|---|---|---:|---:|---:|---:|"]
    for model, result in theirs.items():
        lines.append(f"| {model} | RecBole | {result['ndcg@10']:.4f} | {result['hr@10']:.4f} | | {result['seconds']} |")
        for key, mine_result in mine.items():
            name, label = key.split(" | ")
            if name == model:
                diff = mine_result["ndcg@10"] / result["ndcg@10"] - 1 if result["ndcg@10"] else float("nan")
                lines.append(f"| {model} | {label} | {mine_result['ndcg@10']:.4f} ± {mine_result['ndcg@10_se']:.4f} | "
                             f"{mine_result['hr@10']:.4f} | "
                             f"{diff:+.1%} | {mine_result['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recbole", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="tiny", help="world scale from params.yaml (tiny: seconds; default: minutes)")
    parser.add_argument("--epochs", type=int, default=25, help="SASRec epochs on both sides")
    # RecBole's SASRec is the slow one (~8 min on the tiny world, hours at the default scale on 2 cores)
    parser.add_argument("--models", default=",".join(MODELS), help="which of Pop,ItemKNN,SASRec to compare")
    args = parser.parse_args()
    models = tuple(m for m in args.models.split(",") if m)
    if unknown := set(models) - set(MODELS):
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")

    from leadre.config import load_params
    from leadre.data.generate import generate_world

    params = load_params(REPO / "params.yaml")
    world = generate_world(params.world.model_copy(update={"scale": args.scale}), params.world.snapshot_time)
    sequences = leave_out_sequences(world.events)
    print(f"{args.scale} world: {sequences['user_id'].nunique()} users with >= 3 ads, "
          f"{sequences['ad_id'].nunique()} ads, {len(sequences)} interactions")
    python = install_recbole()
    with tempfile.TemporaryDirectory(prefix="leadre-recbole-") as tmp:
        data_path = Path(tmp)
        write_atomic(sequences, data_path / DATASET)
        mine = ours(sequences, args.epochs, models)  # first: a failure on our side costs seconds, not RecBole's minutes
        theirs = recbole(python, data_path, args.epochs, models)
    print(report(mine, theirs))
    print(f"\nsaved {save_results('recbole', {'scale': args.scale, 'ours': mine, 'recbole': theirs})}")


if __name__ == "__main__":
    main()
