"""Advertising-specific knowledge alignment data: auxiliary SFT tasks and DPO preference pairs.

Auxiliary tasks (mixed into SFT at `prompts.aux_ratio` examples per main-task example):
- ad_to_sid: the ad's title, industry and description → its semantic ID (what the codebook tokens mean);
- sid_to_text: a semantic ID → the ad's title and industry (the reverse direction);
- titles_prompt: the behaviour prompt with ads written as titles instead of S-IDs → the same response
  (text ↔ ID alignment).

DPO pairs, for a main-task prompt: chosen = the ad the user engaged with (relevant by construction); rejected =
an ad of lower eCPM that was live at the cut-off, from the same intent (industry) with probability
`dpo_same_intent_rejected`, else from any industry. A prompt whose engaged ad has no such lower-value ad gets no
pair: a chosen ad is never an irrelevant one and always has the higher eCPM.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REJECTION_ROUNDS = 16  # random draws per pair before giving up on finding a lower-eCPM live ad


def ad_to_sid_prompt(ads: pd.DataFrame) -> pd.Series:
    return ("The ad's name is " + ads["title"].astype(str) + "; industry: " + ads["industry"].astype(str)
            + "; description: " + ads["description"].astype(str) + " What is this ad's semantic ID?")


def sid_to_text_prompt(sids: pd.Series) -> pd.Series:
    return "Which ad has the semantic ID " + sids.astype(str) + "? Answer with its name and industry."


def sid_to_text_answer(ads: pd.DataFrame) -> pd.Series:
    return ads["title"].astype(str) + " (industry: " + ads["industry"].astype(str) + ")"


def sample_examples(n_items: int, ratio: float, n_main: int, rng: np.random.Generator) -> np.ndarray:
    """Rows for an auxiliary task: ratio × main-task examples, each item once before any repeats."""
    wanted = int(round(ratio * n_main))
    if wanted == 0 or n_items == 0:
        return np.zeros(0, dtype=np.int64)
    repeats = -(-wanted // n_items)
    return np.concatenate([rng.permutation(n_items) for _ in range(repeats)])[:wanted]


def sample_rejected(chosen: np.ndarray, cutoff: np.ndarray, ads: pd.DataFrame, intent: np.ndarray,
                    same_intent_share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A rejected ad row per pair (-1 where none was found) and whether it came from the chosen ad's intent."""
    ecpm = ads["ecpm"].to_numpy()
    created = ads["created_at"].dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    expires = ads["expires_at"].dt.tz_convert(None).to_numpy().astype("datetime64[ms]")
    expires = np.where(np.isnat(expires), np.iinfo(np.int64).max, expires.astype(np.int64))  # null: never expires
    ad_intent = ads["industry"].cat.codes.to_numpy()
    by_intent = np.argsort(ad_intent, kind="stable")
    sizes = np.bincount(ad_intent, minlength=ad_intent.max() + 1)
    starts = np.cumsum(sizes) - sizes
    same = rng.random(len(chosen)) < same_intent_share
    rejected = np.full(len(chosen), -1)
    todo = np.arange(len(chosen))
    for _ in range(REJECTION_ROUNDS):
        if len(todo) == 0:
            break
        u = rng.random(len(todo))
        own = intent[todo]
        candidate = np.where(same[todo], by_intent[starts[own] + (u * sizes[own]).astype(np.int64)],
                             (u * len(ecpm)).astype(np.int64))
        c = cutoff[todo]
        ok = ((ecpm[candidate] < ecpm[chosen[todo]]) & (created[candidate] <= c) & (c < expires[candidate])
              & (candidate != chosen[todo]))
        rejected[todo[ok]] = candidate[ok]
        todo = todo[~ok]
    return rejected, same
