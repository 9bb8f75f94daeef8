"""Rendering prompts: the profile, long-term and short-term facets of the LEADRE prompt, as chat messages.

All string work happens in pyarrow's vectorised kernels on whole chunks of pairs; Python never loops over events.
A prompt is one user message (no system message: a constant one would be stored millions of times and
teach nothing); it looks like this:

    Profile: female, 47, Shanghai/Jing'an, bachelor, teacher
    Interests (30 days): finance/credit_card:12, money:9, emotion:7
    Recent: 3d click <a_3><b_1><c_7><d_0>; 20h watch Budget travel | part 4; 35m search best hoodie
    Which ad next?

`3d click <a_3>…` is `<how long before the cut-off> <action> <object>`: ads as semantic IDs (or as titles, for
the text-alignment task), contents as titles, searches as the query text. The notation is compact on purpose: the
token budget (`max_prompt_tokens`) is what a CPU-trained model can afford, and every label, quote or long action
name it spends on is an event of the short-term facet it does not see (the first, verbose notation left the recent
behaviour empty in half the training prompts). Profile values come in PROFILE_FIELDS order, without labels, then
the user's other attributes (`name=value`, from an import) when there are any. Events are separated by "; " because
content titles contain commas. When the prompt would exceed `max_prompt_tokens`, the oldest recent events are
dropped first. A facet with nothing to say for a user (no profile field known, no event in the window) is left out,
label and all, rather than rendered empty: single-domain public logs often have no profile at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadre.config import PromptParams
from leadre.data.contracts import ACTIONS_BY_DOMAIN
from leadre.prompts.pairs import EventLog, _expand
from leadre.prompts.tokens import TokenCounter
from leadre.units import MS_PER_DAY

INSTRUCTION = "Which ad next?"
PROFILE_FIELDS = ("gender", "age", "residence", "education", "occupation")
PROFILE_SEPARATOR, INTEREST_SEPARATOR, EVENT_SEPARATOR, FIELD_SEPARATOR = ", ", ", ", "; ", " "
# Action names as the prompt writes them: one short word each (the event log's names cost 3 tokens apiece).
ACTION_WORDS = {"play_video": "watch", "read_article": "read", "click_ad": "click", "convert_ad": "convert",
                "search": "search"}
SECTION_LABELS = {"profile": "Profile: ", "long_term": "Interests ({days} days): ", "short_term": "Recent: "}
MAX_AGO_DAYS = 999
# Pairs rendered at once: small enough for the allocator to reuse a slice's arrays (see render) and for two threads to
# share the caches, large enough that the per-slice overhead of the kernels stays small (at 1M users, 2 threads:
# 8k pairs rendered chunks ~7% faster than 16k, with half the page faults; 4k and 32k were slower).
PAIRS_PER_SLICE = 8_192


def _ago_labels() -> list[str]:
    """Labels for how long before the cut-off an event happened: minutes, then hours, then days."""
    return [f"{m}m" for m in range(60)] + [f"{h}h" for h in range(48)] + [f"{d}d" for d in range(MAX_AGO_DAYS + 1)]


def ago_codes(delta_ms: np.ndarray) -> np.ndarray:
    minutes, hours, days = delta_ms // 60_000, delta_ms // 3_600_000, delta_ms // MS_PER_DAY
    return np.where(minutes < 60, minutes, np.where(hours < 48, 60 + hours, 108 + np.minimum(days, MAX_AGO_DAYS)))


@dataclass
class Catalogue:
    """Every text a prompt can mention, with its token count, indexed by the codes in EventLog."""

    object_as_sid: pa.Array  # ads as S-IDs, then contents and queries as text
    object_as_title: pa.Array  # ads as titles, then the same
    object_tokens_sid: np.ndarray
    object_tokens_title: np.ndarray
    actions: pa.Array
    action_tokens: np.ndarray
    categories: pa.Array
    category_tokens: np.ndarray
    ago: pa.Array
    ago_tokens: np.ndarray
    profiles: pa.Array  # per user
    profile_tokens: np.ndarray
    number_tokens: np.ndarray  # tokens of str(n) for the counts in the long-term facet
    fixed_tokens: int  # the template: labels, line breaks, the instruction
    is_content_action: np.ndarray  # per action code: a content-domain action (what the content ablation drops)
    is_ad_action: np.ndarray  # per action code: an ad engagement (click, conversion)

    @classmethod
    def build(cls, users: pd.DataFrame, objects_sid: list[str], objects_title: list[str], actions: np.ndarray,
              categories: np.ndarray, counter: TokenCounter, long_term_days: int) -> Catalogue:
        ago = _ago_labels()
        # Each field through its distinct values (few: a million users have a few hundred ages and places), so no
        # per-user Python string is made: a missing value reads "unknown".
        separators = PROFILE_SEPARATOR * (len(PROFILE_FIELDS) - 1)
        profile_tokens = np.full(len(users), int(counter.count([separators])[0]), dtype=np.int64)
        fields = []
        for field in PROFILE_FIELDS:
            codes, distinct = pd.factorize(users[field], use_na_sentinel=True)
            values = [*pd.Series(distinct, dtype=object).astype(str), "unknown"]
            codes = np.where(codes < 0, len(values) - 1, codes)
            fields.append(pa.array(values, pa.string()).take(pa.array(codes)))
            profile_tokens += counter.count(values)[codes]
        profiles = pc.binary_join_element_wise(*fields, PROFILE_SEPARATOR)
        attributes = users["attributes"] if "attributes" in users else pd.Series(None, index=users.index, dtype=object)
        has_attributes = attributes.notna().to_numpy()
        if has_attributes.any():
            extra = pa.array(attributes.where(attributes.notna(), "").astype(str).to_numpy(), pa.string())
            profiles = pc.if_else(pa.array(has_attributes),
                                  pc.binary_join_element_wise(profiles, extra, PROFILE_SEPARATOR), profiles)
            profile_tokens = profile_tokens + np.where(has_attributes, counter.count(
                attributes.where(attributes.notna(), "").astype(str).tolist()) + 1, 0)
        known = users[list(PROFILE_FIELDS)].notna().any(axis=1).to_numpy() | has_attributes
        profiles = pc.if_else(pa.array(known), profiles, pa.scalar(""))
        profile_tokens = np.where(known, profile_tokens, 0)
        fixed = "\n".join([*(label.format(days=long_term_days) for label in SECTION_LABELS.values()), INSTRUCTION])
        action_words = np.array([ACTION_WORDS.get(a, a) for a in actions.astype(str)], dtype=object)
        return cls(
            object_as_sid=pa.array(objects_sid, pa.string()), object_as_title=pa.array(objects_title, pa.string()),
            object_tokens_sid=counter.count(objects_sid), object_tokens_title=counter.count(objects_title),
            actions=pa.array(action_words.tolist(), pa.string()), action_tokens=counter.count(action_words.tolist()),
            categories=pa.array(categories.astype(str)), category_tokens=counter.count(categories.astype(str).tolist()),
            ago=pa.array(ago), ago_tokens=counter.count(ago), profiles=profiles,
            profile_tokens=np.asarray(profile_tokens, dtype=np.int32),
            number_tokens=counter.count([str(n) for n in range(10_000)]),
            fixed_tokens=int(counter.count([fixed])[0]),
            is_content_action=np.isin(actions.astype(str), ACTIONS_BY_DOMAIN["content"]),
            is_ad_action=np.isin(actions.astype(str), ACTIONS_BY_DOMAIN["ad"]),
        )


@dataclass
class Rendered:
    user_message: pa.Array
    tokens: np.ndarray  # prompt tokens of the user message (system message excluded)
    events_shown: np.ndarray
    last_event_ts: np.ndarray  # ms of the newest event shown (-1 if none): always before the cut-off


def _join_groups(values: pa.Array, owner: np.ndarray, n_groups: int, separator: str) -> pa.Array:
    """Join `values` (sorted by owner) into one string per group; empty groups give ''."""
    offsets = np.r_[0, np.cumsum(np.bincount(owner, minlength=n_groups))].astype(np.int32)
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), separator)


def _count_newer(flag: np.ndarray, owner: np.ndarray, n_groups: int) -> np.ndarray:
    """For events sorted by owner then time: how many flagged events of the same owner come after each one."""
    running = np.cumsum(flag)
    group_last = np.cumsum(np.bincount(owner, minlength=n_groups)) - 1
    return running[group_last[owner]] - running if len(owner) else running


def _fit_newest_first(cost: np.ndarray, owner: np.ndarray, eligible: np.ndarray, budget: np.ndarray,
                      n_groups: int) -> np.ndarray:
    """Eligible events kept newest first while their owner's running token total stays within its budget."""
    cost = np.where(eligible, cost, 0)
    newest_first = _count_newer(cost, owner, n_groups) + cost  # tokens of this event and all newer eligible ones
    return eligible & (newest_first <= budget[owner])


def _section(label: str, content: pa.Array) -> pa.Array:
    """`label content\n` per row, or nothing where the content is empty."""
    text = pc.binary_join_element_wise(pa.scalar(label), content, pa.scalar("\n"), "")
    return pc.if_else(pc.equal(pc.utf8_length(content), 0), pa.scalar(""), text)


def render(log: EventLog, catalogue: Catalogue, users: np.ndarray, cutoffs: np.ndarray, params: PromptParams,
           ads_as: str = "sid") -> Rendered:
    """The user message for each (user, cut-off), using only events strictly before the cut-off.

    Pairs are rendered PAIRS_PER_SLICE at a time (each prompt depends on its own pair alone, so the result is the
    same): a slice's arrays are a few MB, which the allocator hands back and reuses, where a whole chunk's (tens of
    MB each) were fresh pages from the kernel on every step, and faulting them in took about 40% of rendering."""
    if len(users) <= PAIRS_PER_SLICE:
        return _render_slice(log, catalogue, users, cutoffs, params, ads_as)
    parts = [_render_slice(log, catalogue, users[i:i + PAIRS_PER_SLICE], cutoffs[i:i + PAIRS_PER_SLICE], params,
                           ads_as) for i in range(0, len(users), PAIRS_PER_SLICE)]
    return Rendered(pa.concat_arrays([p.user_message for p in parts]), np.concatenate([p.tokens for p in parts]),
                    np.concatenate([p.events_shown for p in parts]), np.concatenate([p.last_event_ts for p in parts]))


def _render_slice(log: EventLog, catalogue: Catalogue, users: np.ndarray, cutoffs: np.ndarray, params: PromptParams,
                  ads_as: str) -> Rendered:
    n = len(users)
    end = log.position(users, cutoffs)
    first = log.user_start[users]

    # Long-term interest: the most frequent categories in the window, as category:count.
    features = params.features
    lt_owner, lt_event = _expand(log.position(users, cutoffs - params.long_term_days * MS_PER_DAY), end)
    if not features.content:  # ablation: the content domain (videos, articles) leaves the prompt entirely
        kept = ~catalogue.is_content_action[log.action[lt_event]]
        lt_owner, lt_event = lt_owner[kept], lt_event[kept]
    if not features.long_term:
        lt_owner, lt_event = lt_owner[:0], lt_event[:0]
    n_categories = len(catalogue.categories)
    counts = np.bincount(lt_owner * n_categories + log.category[lt_event], minlength=n * n_categories)
    counts = counts.reshape(n, n_categories)
    top = np.argsort(-counts, axis=1, kind="stable")[:, : params.long_term_top]
    top_counts = np.take_along_axis(counts, top, axis=1)
    shown = top_counts > 0
    top_owner = np.repeat(np.arange(n), shown.sum(1))
    top_cat, top_n = top[shown], np.minimum(top_counts[shown], len(catalogue.number_tokens) - 1)
    items = pc.binary_join_element_wise(catalogue.categories.take(pa.array(top_cat)),
                                        pc.cast(pa.array(top_n), pa.string()), ":")
    long_term = _join_groups(items, top_owner, n, INTEREST_SEPARATOR)
    long_term_tokens = np.bincount(top_owner, weights=catalogue.category_tokens[top_cat]
                                   + catalogue.number_tokens[top_n] + 2, minlength=n)  # ":" and ","

    # Short-term interest: the newest events that fit the token budget.
    budget = (params.max_prompt_tokens - catalogue.fixed_tokens - long_term_tokens
              - (catalogue.profile_tokens[users] if features.profile else 0))
    st_owner, st_event = _expand(np.maximum(first, end - params.short_term_events), end)
    if not features.content:
        kept = ~catalogue.is_content_action[log.action[st_event]]
        st_owner, st_event = st_owner[kept], st_event[kept]
    if not features.short_term:
        st_owner, st_event = st_owner[:0], st_event[:0]
    ago = ago_codes(cutoffs[st_owner] - log.ts[st_event])
    object_tokens = catalogue.object_tokens_sid if ads_as == "sid" else catalogue.object_tokens_title
    cost = (catalogue.ago_tokens[ago] + catalogue.action_tokens[log.action[st_event]]
            + object_tokens[log.obj[st_event]] + 1).astype(np.int64)  # the ";" before the next event
    # The ad facet goes first: the newest `ad_events` ad engagements of the window are kept before any other event,
    # then the newest other events fill what is left of the budget. Ad clicks are a quarter of the events, so a
    # newest-first cut alone shows a third of the prompts with no ad at all, though the ads a user engaged with are
    # the strongest clue to the ads they engage with next (what item-KNN lives on).
    is_ad = catalogue.is_ad_action[log.action[st_event]]
    ads_after = _count_newer(is_ad, st_owner, n)  # ad events newer than each event, in its group
    first_pass = is_ad & (ads_after < params.ad_events)
    keep = _fit_newest_first(cost, st_owner, first_pass, budget, n)
    left = budget - np.bincount(st_owner[keep], weights=cost[keep], minlength=n)
    keep |= _fit_newest_first(cost, st_owner, ~first_pass, left, n)
    st_owner, st_event, ago, cost = st_owner[keep], st_event[keep], ago[keep], cost[keep]
    objects = catalogue.object_as_sid if ads_as == "sid" else catalogue.object_as_title
    events = pc.binary_join_element_wise(catalogue.ago.take(pa.array(ago)),
                                         catalogue.actions.take(pa.array(log.action[st_event])),
                                         objects.take(pa.array(log.obj[st_event])), FIELD_SEPARATOR)
    short_term = _join_groups(events, st_owner, n, EVENT_SEPARATOR)

    # Sections an ablation switches off are left out, headers included, so the model sees no trace of them; so are
    # the sections a user has no data for.
    sections = []
    if features.profile:
        sections.append(_section(SECTION_LABELS["profile"], catalogue.profiles.take(pa.array(users))))
    if features.long_term:
        sections.append(_section(SECTION_LABELS["long_term"].format(days=params.long_term_days), long_term))
    if features.short_term:
        sections.append(_section(SECTION_LABELS["short_term"], short_term))
    message = pc.binary_join_element_wise(*sections, pa.scalar(INSTRUCTION), "")
    profile_tokens = catalogue.profile_tokens[users] if features.profile else 0
    tokens = (catalogue.fixed_tokens + profile_tokens + long_term_tokens
              + np.bincount(st_owner, weights=cost, minlength=n)).astype(np.int32)
    last_ts = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_ts, st_owner, log.ts[st_event])
    return Rendered(message, tokens, np.bincount(st_owner, minlength=n), last_ts)
