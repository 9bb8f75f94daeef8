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
Leave-last-out split (`evaluate.protocol: leave_last_out`, RecBole's `LS: valid_and_test`, `order: TO`): a
user's sequence is their first engagement with each ad, in time order (a repeat of an ad already engaged with, such
as the conversion after its click, is not a new item: history exclusion would make it unreachable). Users with
fewer than 3 such ads have no valid or test pair. Otherwise:
- test: the last ad is the target; the cut-off is its engagement time, so the prompt shows everything strictly before;
- valid: the second-last ad, at its time, for every such user;
- train: cut-offs at the user's earlier clicks as above; targets end before the valid target's time (users without a
  valid target train on all their engagements: they are never scored).
A prompt shows only events strictly before its cut-off. Intent-aware: the targets after one cut-off are grouped
by the ad's industry (the intent), and each intent gets its own pair, whose response is the first ad the user
engaged with in that intent; `all_targets` keeps every ad of the intent in the window for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from leadre.config import PromptParams
from leadre.units import MS_PER_DAY

ENGAGEMENTS = ("click_ad", "convert_ad")
PROTOCOLS = ("temporal", "leave_last_out")
LEAVE_OUT_MIN_ITEMS = 3  # a train item, the valid target and the test target, as RecBole's LS split needs


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
        # (user, time) packed in one sorted int64, computed once: every cut-off lookup searches it. A user's stride is
        # the log's time span plus a slot on each side, and a query's time is clamped into that range (a time before
        # the log's first event finds the same events as one just before it): at a year's span in ms that leaves
        # room for ~290M users, where a fixed 2^42 ms per user overflowed past 2.1M.
        self.base = int(self.ts.min()) if len(self.ts) else 0
        self.span = int(self.ts.max()) - self.base if len(self.ts) else 0
        self.stride = self.span + 3
        users = int(self.user.max()) + 1 if len(self.user) else 0
        if users * self.stride >= 2**63:
            raise ValueError(f"{users:,} users over {self.span / MS_PER_DAY:,.0f} days of events do not fit the "
                             "event log's int64 (user, time) keys: import a shorter window of events")
        self.key = self.user.astype(np.int64) * self.stride
        self.key += self.ts
        self.key -= self.base - 1

    def keys(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Lookup keys of (user, time) queries, comparable with `key`."""
        offset = np.clip(np.asarray(ts, dtype=np.int64) - self.base, -1, self.span + 1) + 1
        return np.asarray(user, dtype=np.int64) * self.stride + offset

    def position(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Index of the first event of `user` at or after `ts` (so events before it are strictly earlier)."""
        return np.searchsorted(self.key, self.keys(user, ts), side="left")


@dataclass
class Pairs:
    """One row per <prompt, response> pair of the main task."""

    user: np.ndarray
    cutoff: np.ndarray  # ms; the prompt shows events strictly before it
    split: np.ndarray  # code into leadre.prompts.SPLITS
    target_ad: np.ndarray  # row in the ads table
    target_ts: np.ndarray
    intent: np.ndarray  # code into the ads' industries
    targets: np.ndarray  # every ad row engaged in the pair's intent and window, flat ...
    target_offsets: np.ndarray  # ... pair i owns targets[target_offsets[i]:target_offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.user)

    def all_targets(self, i: int) -> np.ndarray:
        return self.targets[self.target_offsets[i]:self.target_offsets[i + 1]]

    def with_responses(self, per_pair: int) -> tuple[Pairs, np.ndarray]:
        """Each pair once per response, its first `per_pair` distinct targets in engagement order (the first is
        `target_ad`), as `target_ad` (`target_ts` stays the pair's first engagement); and the pair of each row."""
        count = np.minimum(np.diff(self.target_offsets), per_pair)
        owner, flat = _expand(self.target_offsets[:-1], self.target_offsets[:-1] + count)
        rows = self.take(owner)
        return replace(rows, target_ad=self.targets[flat]), owner

    def take(self, index: np.ndarray) -> Pairs:
        owner, flat = _expand(self.target_offsets[index], self.target_offsets[index + 1])
        offsets = np.r_[0, np.cumsum(self.target_offsets[index + 1] - self.target_offsets[index])]
        return Pairs(self.user[index], self.cutoff[index], self.split[index], self.target_ad[index],
                     self.target_ts[index], self.intent[index], self.targets[flat], offsets)


# What pair selection draws for, each with its own stream per chunk: [seed, chunk, purpose]. The purpose is never 0
# because numpy's SeedSequence ignores trailing zeros ([s, c, 0] is [s, c], the chunk's prompt stream in build.py).
HELD_OUT_DRAWS, TRAIN_CUTOFF_DRAWS = (1 << 31) + 1, (1 << 31) + 2


@dataclass(frozen=True)
class PairDraws:
    """The uniform numbers pair selection draws, chunk by chunk of users: a row's number comes from the stream
    (seed, its user's chunk, purpose), in the rows' order within the chunk.

    So a user's draws depend on its chunk's users alone, never on which other chunks the event log holds: a shard
    of the prompts step reads only its own users' events and selects exactly the pairs one run over every user
    selects for them. `chunk_of_user` (per user row; None: every user in chunk 0) is the prompts step's chunks."""

    seed: int
    chunk_of_user: np.ndarray | None = None

    def uniform(self, purpose: int, users: np.ndarray) -> np.ndarray:
        """One number in [0, 1) per entry of `users` (user rows)."""
        chunks = np.zeros(len(users), dtype=np.int64) if self.chunk_of_user is None else self.chunk_of_user[users]
        if len(chunks) and chunks.max() < 2**16:  # a stable sort of 16-bit keys is a radix sort: one pass
            chunks = chunks.astype(np.uint16)
        order = np.argsort(chunks, kind="stable")
        starts = np.flatnonzero(run_starts(chunks[order]))
        out = np.empty(len(users))
        for chunk, lo, hi in zip(chunks[order[starts]], starts, np.append(starts[1:], len(users))):
            out[order[lo:hi]] = np.random.default_rng([self.seed, int(chunk), purpose]).random(hi - lo)
        return out


def run_starts(values: np.ndarray) -> np.ndarray:
    """Mask of the positions where a run of equal values begins (of an array in order: where a new value starts)."""
    starts = np.ones(len(values), dtype=bool)
    starts[1:] = values[1:] != values[:-1]
    return starts


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique of an array already in order (the log's users are), without its sort."""
    return values[run_starts(values)]


def _expand(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [start, end): (which range, index) of every element, vectorised."""
    lengths = np.maximum(ends - starts, 0)
    owner = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.cumsum(lengths) - lengths
    return owner, np.repeat(starts - offsets, lengths) + np.arange(len(owner))


@dataclass
class _Engagements:
    """The ad engagements of the log, in (user, time) order."""

    index: np.ndarray  # position in the event log
    user: np.ndarray
    ts: np.ndarray
    ad: np.ndarray  # ads come first in the object table, so this is also the ads row


def _engagements(log: EventLog) -> _Engagements:
    # a flag per action code, looked up by each event's code: naming every event's action made strings as long as the log
    engaged = np.flatnonzero(np.isin(log.actions, ENGAGEMENTS)[log.action])
    return _Engagements(engaged, log.user[engaged], log.ts[engaged], log.obj[engaged])


def leave_out_targets(user: np.ndarray, ts: np.ndarray, ad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-last-out targets from engagements in (user, time) order: (users, valid index, test index), the indexes
    into the given arrays, for users with at least LEAVE_OUT_MIN_ITEMS distinct ads. Shared with evaluation, so the
    baselines' history ends exactly where the prompts' does."""
    order = np.lexsort((ts, user))  # already so for the event log; evaluation's frames are sorted the same way
    first = pd.DataFrame({"user": user[order], "ad": ad[order]}).duplicated(["user", "ad"]).to_numpy()
    new_item = order[~first]  # first engagement with each ad, still in (user, time) order
    users, starts, counts = np.unique(user[new_item], return_index=True, return_counts=True)
    enough = counts >= LEAVE_OUT_MIN_ITEMS
    last = starts[enough] + counts[enough] - 1
    return users[enough], new_item[last - 1], new_item[last]


def select_pairs(log: EventLog, ad_industry: np.ndarray, snapshot_ms: int, params: PromptParams,
                 draws: PairDraws, protocol: str = "temporal") -> Pairs:
    """Cut-offs and intent-grouped targets for every split, under the temporal or the leave-last-out protocol.

    A user's pairs depend on its own events and its chunk's draws only (`PairDraws`): a log that holds some chunks'
    users gives exactly the pairs a log of every user gives them.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    e = _engagements(log)
    if protocol == "leave_last_out":
        return _leave_last_out_pairs(log, e, ad_industry, params, draws)
    test_cut = snapshot_ms - params.holdout_days * MS_PER_DAY
    valid_cut = test_cut - params.holdout_days * MS_PER_DAY

    # Held-out validation users: drawn from every user with an engagement, so the draw does not depend on the
    # window it is used for; share 1 holds out everybody (train then ends at the valid cut-off for all).
    active = _distinct_sorted(e.user)
    held_out = np.zeros(len(log.user_start), dtype=bool)
    held_out[active[draws.uniform(HELD_OUT_DRAWS, active) < params.valid_user_share]] = True

    cuts = []
    for split, start, end in ((1, valid_cut, test_cut), (2, test_cut, snapshot_ms)):
        users = _distinct_sorted(e.user[(e.ts >= start) & (e.ts < end)])
        enough = log.position(users, np.full(len(users), start)) - log.user_start[users] >= params.min_history_events
        users = users[enough & held_out[users]] if split == 1 else users[enough]
        cuts.append((users, np.full(len(users), start), np.full(len(users), end), np.full(len(users), split)))
    train_end = np.where(held_out[e.user], valid_cut, test_cut)  # per engagement: its user's end of training
    cuts.append(_train_cutoffs(log, e, train_end, params, draws))
    return _window_pairs(log, e, ad_industry, *(np.concatenate(x) for x in zip(*cuts)))


def _leave_last_out_pairs(log: EventLog, e: _Engagements, ad_industry: np.ndarray, params: PromptParams,
                          draws: PairDraws) -> Pairs:
    users, valid, test = leave_out_targets(e.user, e.ts, e.ad)
    # Training ends at the user's valid target; a user without one is never scored and trains on everything.
    user_end = np.full(len(log.user_start), np.iinfo(np.int64).max)
    user_end[users] = e.ts[valid]
    train = _window_pairs(log, e, ad_industry, *_train_cutoffs(log, e, user_end[e.user], params, draws))
    # One pair per user and split: the held-out ad alone is relevant, at the instant it was engaged with.
    held = np.concatenate([valid, test])
    split = np.repeat([1, 2], len(users))
    ads = e.ad[held]
    held_out = Pairs(user=e.user[held], cutoff=e.ts[held], split=split, target_ad=ads, target_ts=e.ts[held],
                     intent=ad_industry[ads], targets=ads, target_offsets=np.arange(len(held) + 1))
    return _concat([held_out, train])


def _concat(parts: list[Pairs]) -> Pairs:
    offsets = [parts[0].target_offsets]
    for part in parts[1:]:
        offsets.append(part.target_offsets[1:] + offsets[-1][-1])
    return Pairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                   ("user", "cutoff", "split", "target_ad", "target_ts", "intent", "targets")),
                 target_offsets=np.concatenate(offsets))


def _train_cutoffs(log: EventLog, e: _Engagements, train_end: np.ndarray, params: PromptParams,
                   draws: PairDraws) -> tuple[np.ndarray, ...]:
    """(user, cut-off, end, split) of the train pairs; `train_end` is each engagement's user's end of training.

    At earlier clicks with enough history, a few per user, chosen at random. Not at conversions: the answer there
    would be the ad clicked moments before, teaching the model to echo."""
    history = e.index - log.user_start[e.user]  # events before each engagement
    is_click = (log.actions == "click_ad")[log.action[e.index]]
    e_user, e_ts = e.user, e.ts
    candidates = np.flatnonzero(is_click & (e_ts < train_end) & (history >= params.min_history_events))
    # A user's first `max_train_cutoffs_per_user` clicks in this order are drawn: exponential keys make it a weighted
    # sample without replacement (Efraimidis-Spirakis), weight 2^(-age / half-life); uniform without a half-life.
    # The keys are compared as logarithms: 2^(age / half-life) overflows to inf past ~40 years at 14 days (an
    # imported log), and ties of inf would draw the oldest clicks first
    draw = draws.uniform(TRAIN_CUTOFF_DRAWS, e_user[candidates])
    if params.train_cutoff_half_life_days:
        age_days = (train_end[candidates] - e_ts[candidates]) / MS_PER_DAY
        with np.errstate(divide="ignore"):  # a draw of exactly 0 is key -inf: drawn first, as its key 0 was
            draw = np.log(-np.log1p(-draw)) + np.log(2.0) * age_days / params.train_cutoff_half_life_days
    # candidates are in (user, time) order, so each user's are one run
    candidates = candidates[_smallest_per_run(draw, e_user[candidates], params.max_train_cutoffs_per_user)]
    return (e_user[candidates], e_ts[candidates],
            np.minimum(e_ts[candidates] + params.horizon_days * MS_PER_DAY, train_end[candidates]),
            np.zeros(len(candidates), dtype=int))


def _window_pairs(log: EventLog, e: _Engagements, ad_industry: np.ndarray, c_user: np.ndarray, c_ts: np.ndarray,
                  c_end: np.ndarray, c_split: np.ndarray) -> Pairs:
    """Targets of each cut-off: the engagements in [cut-off, end), grouped by intent."""
    e_ts, e_ad = e.ts, e.ad
    e_key = log.key[e.index]
    lo = np.searchsorted(e_key, log.keys(c_user, c_ts), side="left")
    hi = np.searchsorted(e_key, log.keys(c_user, c_end), side="left")
    cut, target = _expand(lo, hi)
    ad, intent = e_ad[target], ad_industry[e_ad[target]]
    # (cut-off, intent) as one integer, in cut-off order; with the ad, still far inside int64 at 100M users x 5M ads
    group = cut.astype(np.int64) * (int(ad_industry.max()) + 1 if len(ad_industry) else 1) + intent
    # Rows by (cut-off, intent), time order kept within each: the rows are already in cut-off order, so this stable
    # sort only reorders the few rows of each cut-off (a fraction of a hashed pass's time at 1M users).
    order = np.argsort(group, kind="stable")
    new_group = run_starts(group[order])
    first = order[new_group]  # the first engagement per (cut-off, intent) is the response
    # An ad engaged again in its group is one target: only groups of several rows can repeat one
    alone = new_group.copy()
    alone[:-1] &= new_group[1:]
    shared = np.flatnonzero(~alone)
    repeat = np.zeros(len(order), dtype=bool)
    repeat[shared] = _repeated(group[order[shared]] * (len(ad_industry) + 1) + ad[order[shared]])
    distinct = order[~repeat]
    offsets = np.r_[np.flatnonzero(np.r_[True, np.diff(group[distinct]) != 0]), len(distinct)]
    cut_of_pair = cut[first]
    return Pairs(user=c_user[cut_of_pair], cutoff=c_ts[cut_of_pair], split=c_split[cut_of_pair],
                 target_ad=ad[first], target_ts=e_ts[target[first]], intent=intent[first], targets=ad[distinct],
                 target_offsets=offsets)


def _smallest_per_run(keys: np.ndarray, runs: np.ndarray, k: int) -> np.ndarray:
    """Mask of the `k` smallest keys of each run of equal `runs` values, ties to the earlier position.

    k passes of a per-run minimum: no sort of the keys, which at millions of keys took several times longer (a run
    of k or fewer keeps every key without a pass).
    """
    chosen = np.zeros(len(keys), dtype=bool)
    if k <= 0:
        return chosen
    starts = np.flatnonzero(run_starts(runs))
    sizes = np.diff(np.append(starts, len(keys)))
    chosen[np.repeat(sizes <= k, sizes)] = True
    large = np.flatnonzero(np.repeat(sizes > k, sizes))  # rows of runs longer than k
    if len(large) == 0:
        return chosen
    large_sizes = sizes[sizes > k]
    owner = np.repeat(np.arange(len(large_sizes)), large_sizes)
    starts = np.cumsum(large_sizes) - large_sizes
    left, taken = keys[large].astype(np.float64), np.zeros(len(large), dtype=bool)
    for _ in range(k):
        smallest = np.minimum.reduceat(left, starts)
        hits = np.flatnonzero((left == smallest[owner]) & ~taken)
        first = hits[run_starts(owner[hits])]  # every run has a hit: it still holds untaken keys
        taken[first] = True
        left[first] = np.inf
    chosen[large[taken]] = True
    return chosen


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Mask of the keys seen earlier in the array (a hash table: no sort)."""
    return pd.Series(keys).duplicated().to_numpy()
