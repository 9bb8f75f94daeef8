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


def tokenized_prompt_completion(rows, tokenizer, completion_only_loss: bool):
    """`rows` (prompt/completion message lists) tokenised as SFTTrainer tokenises them, as `input_ids` and `labels`.

    The same layout as TRL's preparation: the prompt rendered with the generation prompt, the whole conversation,
    the completion starting where their token ids part; labels -100 on the prompt under `completion_only_loss`.
    TRL renders and tokenises row by row in `Dataset.map` (~40 s of the default SFT's set-up, two Python calls per
    row); here every text is rendered, then tokenised in one batched call. Given `input_ids` and `labels`, TRL skips
    its own tokenisation and label building; truncation to max_length is still its own. Other columns of `rows`
    (the task name) come along unchanged, for the caller to use and drop before the trainer sees them.
    """
    from datasets import Dataset
    from trl.data_utils import common_prefix_length

    columns = rows[:]  # Python lists in one conversion (iterating the columns converts row by row)
    prompts, completions = columns.pop("prompt"), columns.pop("completion")
    heads = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
    fulls = tokenizer.apply_chat_template([p + c for p, c in zip(prompts, completions)], tokenize=False)
    ids = tokenizer(heads + fulls, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    head_ids, full_ids = ids[:len(heads)], ids[len(heads):]
    labels = []
    for head, full in zip(head_ids, full_ids):
        prompt_len = common_prefix_length(head, full)
        labels.append([-100] * prompt_len + full[prompt_len:] if completion_only_loss else list(full))
    return Dataset.from_dict({"input_ids": full_ids, "labels": labels, **columns})
