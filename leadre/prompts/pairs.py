"""Which <prompt, response> pairs exist: cut-offs, targets and the time split, as arrays.

Time split (no future event ever reaches a prompt):
- test: cut-off at `snapshot - holdout_days`; targets are the user's ad engagements after it;
- valid: cut-off `holdout_days` earlier; targets are engagements in the week before the test cut-off, for a
  held-out share of users (`valid_user_share`);
- train: cut-offs at a few of the user's earlier clicks (chosen at random, seeded); targets are the
  engagements within `horizon_days` of the cut-off, never at or after the test cut-off, and for held-out users
  never at or after the valid cut-off. So the model knows the week before the test as well as the ID-based
  baselines do (they learn from every engagement before the cut-off), and validation still scores targets no
  training pair has seen.
A prompt shows only events strictly before its cut-off. Intent-aware: the targets after one cut-off are grouped
by the ad's industry (the intent), and each intent gets its own pair, whose response is the first ad the user
engaged with in that intent; `all_targets` keeps every ad of the intent in the window for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from leadre.config import PromptParams
from leadre.units import MS_PER_DAY

SPLITS = ("train", "valid", "test")
ENGAGEMENTS = ("click_ad", "convert_ad")


@dataclass
class EventLog:
    """Events as arrays sorted by (user, time), with everything rendering needs resolved to integer codes."""

    user: np.ndarray  # row in the users table
    ts: np.ndarray  # ms since epoch
    action: np.ndarray  # code into `actions`
    obj: np.ndarray  # row in the object table (ads, then contents, then queries)
    category: np.ndarray  # code into `categories`: ad industry, content category or query topic
    actions: np.ndarray
    categories: np.ndarray
    user_start: np.ndarray  # first event of each user (length users + 1)

    def __post_init__(self) -> None:
        # (user, ms since the first event) packed in one int64, computed once: every cut-off lookup searches it.
        self.base = int(self.ts.min()) if len(self.ts) else 0
        self.key = self.user.astype(np.int64) * (1 << 42) + (self.ts - self.base)

    def position(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Index of the first event of `user` at or after `ts` (so events before it are strictly earlier)."""
        return np.searchsorted(self.key, user.astype(np.int64) * (1 << 42) + (ts - self.base), side="left")


@dataclass
class Pairs:
    """One row per <prompt, response> pair of the main task."""

    user: np.ndarray
    cutoff: np.ndarray  # ms; the prompt shows events strictly before it
    split: np.ndarray  # code into SPLITS
    target_ad: np.ndarray  # row in the ads table
    target_ts: np.ndarray
    intent: np.ndarray  # code into the ads' industries
    targets: np.ndarray  # every ad row engaged in the pair's intent and window, flat ...
    target_offsets: np.ndarray  # ... pair i owns targets[target_offsets[i]:target_offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.user)

    def all_targets(self, i: int) -> np.ndarray:
        return self.targets[self.target_offsets[i]:self.target_offsets[i + 1]]

    def take(self, index: np.ndarray) -> Pairs:
        owner, flat = _expand(self.target_offsets[index], self.target_offsets[index + 1])
        offsets = np.r_[0, np.cumsum(self.target_offsets[index + 1] - self.target_offsets[index])]
        return Pairs(self.user[index], self.cutoff[index], self.split[index], self.target_ad[index],
                     self.target_ts[index], self.intent[index], self.targets[flat], offsets)


def _expand(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [start, end): (which range, index) of every element, vectorised."""
    lengths = np.maximum(ends - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.cumsum(lengths) - lengths
    return owner, starts[owner] + np.arange(lengths.sum()) - offsets[owner]


def select_pairs(log: EventLog, ad_industry: np.ndarray, snapshot_ms: int, params: PromptParams,
                 rng: np.random.Generator) -> Pairs:
    """Cut-offs and intent-grouped targets for every split."""
    engaged = np.flatnonzero(np.isin(log.actions[log.action], ENGAGEMENTS))
    e_user, e_ts, e_ad = log.user[engaged], log.ts[engaged], log.obj[engaged]  # ads come first in the object table
    test_cut = snapshot_ms - params.holdout_days * MS_PER_DAY
    valid_cut = test_cut - params.holdout_days * MS_PER_DAY
    history = engaged - log.user_start[e_user]  # events before each engagement

    # Held-out validation users: drawn from every user with an engagement, so the draw does not depend on the
    # window it is used for; share 1 holds out everybody (train then ends at the valid cut-off for all).
    active = np.unique(e_user)
    held_out = np.zeros(len(log.user_start), dtype=bool)
    held_out[active[rng.random(len(active)) < params.valid_user_share]] = True

    cut_users, cut_ts, cut_end, cut_split = [], [], [], []
    for split, start, end in ((1, valid_cut, test_cut), (2, test_cut, snapshot_ms)):
        users = np.unique(e_user[(e_ts >= start) & (e_ts < end)])
        enough = log.position(users, np.full(len(users), start)) - log.user_start[users] >= params.min_history_events
        users = users[enough & held_out[users]] if split == 1 else users[enough]
        cut_users.append(users)
        cut_ts.append(np.full(len(users), start))
        cut_end.append(np.full(len(users), end))
        cut_split.append(np.full(len(users), split))
    # Train cut-offs: at earlier clicks with enough history, a few per user, chosen at random. Not at
    # conversions: the answer there would be the ad clicked moments before, teaching the model to echo.
    is_click = log.actions[log.action[engaged]] == "click_ad"
    train_end = np.where(held_out[e_user], valid_cut, test_cut)  # per engagement: its user's end of training
    candidates = np.flatnonzero(is_click & (e_ts < train_end) & (history >= params.min_history_events))
    # A user's first `max_train_cutoffs_per_user` clicks in this order are drawn: exponential keys make it a weighted
    # sample without replacement (Efraimidis-Spirakis), weight 2^(-age / half-life); uniform without a half-life.
    draw = rng.random(len(candidates))
    if params.train_cutoff_half_life_days:
        age_days = (train_end[candidates] - e_ts[candidates]) / MS_PER_DAY
        draw = -np.log1p(-draw) * np.exp2(age_days / params.train_cutoff_half_life_days)
    order = np.lexsort((draw, e_user[candidates]))
    candidates = candidates[order]
    first_of_user = np.r_[True, e_user[candidates][1:] != e_user[candidates][:-1]]
    group_start = np.maximum.accumulate(np.where(first_of_user, np.arange(len(candidates)), 0))
    candidates = candidates[np.arange(len(candidates)) - group_start < params.max_train_cutoffs_per_user]
    candidates = np.unique(candidates)  # back in (user, time) order
    cut_users.append(e_user[candidates])
    cut_ts.append(e_ts[candidates])
    cut_end.append(np.minimum(e_ts[candidates] + params.horizon_days * MS_PER_DAY, train_end[candidates]))
    cut_split.append(np.zeros(len(candidates), dtype=int))
    c_user, c_ts, c_end, c_split = (np.concatenate(x) for x in (cut_users, cut_ts, cut_end, cut_split))

    # Targets of each cut-off: the engagements in [cut-off, end), grouped by intent.
    e_key = log.key[engaged]
    lo = np.searchsorted(e_key, c_user.astype(np.int64) * (1 << 42) + (c_ts - log.base), side="left")
    hi = np.searchsorted(e_key, c_user.astype(np.int64) * (1 << 42) + (c_end - log.base), side="left")
    cut, target = _expand(lo, hi)
    intent = ad_industry[e_ad[target]]
    frame = pd.DataFrame({"cut": cut, "intent": intent, "ad": e_ad[target], "ts": e_ts[target]})
    # Rows are in time order within a cut-off, so the first row per (cut-off, intent) is the response.
    first = frame.drop_duplicates(["cut", "intent"]).sort_values(["cut", "intent"], kind="stable")
    distinct = frame.drop_duplicates(["cut", "intent", "ad"]).sort_values(["cut", "intent"], kind="stable")
    new_group = np.r_[True, (np.diff(distinct["cut"].to_numpy()) != 0) | (np.diff(distinct["intent"].to_numpy()) != 0)]
    offsets = np.r_[np.flatnonzero(new_group), len(distinct)]
    cut_of_pair = first["cut"].to_numpy()
    return Pairs(user=c_user[cut_of_pair], cutoff=c_ts[cut_of_pair], split=c_split[cut_of_pair],
                 target_ad=first["ad"].to_numpy(), target_ts=first["ts"].to_numpy(),
                 intent=first["intent"].to_numpy(), targets=distinct["ad"].to_numpy(), target_offsets=offsets)
