"""The training data the trainers see: the prompts step's Parquet splits as Hugging Face datasets.

TRL's conversational formats are used as they are: SFT rows are `prompt`/`completion` message lists (loss on the
completion only), DPO rows `prompt`/`chosen`/`rejected`. Other columns stay in the Parquet files for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from leadre.config import Params

SFT_COLUMNS = ["prompt", "completion"]
DPO_COLUMNS = ["prompt", "chosen", "rejected"]


def split_files(params: Params, dataset: str, split: str) -> list[Path]:
    folder = params.path(params.prompts.out_dir) / dataset / split
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no Parquet files (run `leadre prompts build` first)")
    return files


def load_split(params: Params, dataset: str, split: str, columns: list[str], limit: int, seed: int):
    """One split as a `datasets.Dataset` of `columns`, shuffled with `seed` and cut to `limit` rows (0 = all).

    The shuffle matters beyond sampling: the SFT train files hold the main task and the auxiliary tasks in
    separate parts, and a cut without it would keep only the first.
    """
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_parquet(str(f), columns=columns, keep_in_memory=True) for f in split_files(params, dataset,
                                                                                                    split)]
    rows = concatenate_datasets(parts).shuffle(seed=seed)
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def corpus(rows, limit: int) -> Iterator[str]:
    """Texts the tiny model's tokenizer is trained on: prompts and responses of the first `limit` rows.

    A generator: only a tokenizer being trained reads it (not a hub model's, nor a resumed run's).
    """
    for row in rows.select(range(min(limit, len(rows)))):
        yield from (message["content"] for message in row["prompt"])
        yield from (message["content"] for message in row["completion"])
