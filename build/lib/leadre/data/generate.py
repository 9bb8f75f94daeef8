"""`leadre data generate`: a seeded, realistic ad world in the data contracts (leadre/data/contracts.py).

The latent structure the recommender has to learn:
- each user holds 1..k commercial intents (sub-industries) whose prior depends on the profile;
- a share of users drift: one intent is replaced by a new one part-way through the history;
- intents show up across domains: ad clicks in the sub-industry, searches for its products, and content in the
  categories its audience reads (beside leisure content that has nothing to do with ads);
- conversions follow a fraction of clicks; ads launch and expire, so some ads exist only late in the history
  (cold start); eCPM is log-normal by industry and nudges how often an ad is shown.

Everything is vectorised with numpy so 1M users (~40M events) fit the benchmark budget; each component draws from
its own child of the seed, so the same seed always yields the same tables.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from leadre.config import Params, WorldParams, WorldScale
from leadre.data import vocabulary as V
from leadre.data.contracts import CONTENT_KINDS, GENDERS, LANDING_TYPES
from leadre.data.tables import write_tables
from leadre.units import MS_PER_DAY

log = logging.getLogger(__name__)

# Disjoint id ranges per table: a mixed-up (domain, object_id) is then caught by validation instead of silently
# pointing at another table's row.
ID_BASE = {"users": 1, "ads": 1_000_000_000, "contents": 2_000_000_000, "queries": 3_000_000_000}
# Action codes used while generating; play_video + kind code gives the content action (kind 0 video, 1 article).
ACTION_CODE = {"click_ad": 0, "convert_ad": 1, "play_video": 2, "read_article": 3, "search": 4}
AGE_BUCKETS = np.array([18, 25, 35, 45, 60])  # bucket edges for the profile → intent affinity


@dataclass(frozen=True)
class World:
    users: pd.DataFrame
    ads: pd.DataFrame
    contents: pd.DataFrame
    queries: pd.DataFrame
    events: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"users": self.users, "ads": self.ads, "contents": self.contents, "queries": self.queries,
                "events": self.events}


class GroupSampler:
    """Draw items by weight within a group (e.g. an ad within a sub-industry) for millions of events at once.

    Items are laid out by group with keys `group + cumulative share within group`, so one `searchsorted` picks an
    item for every event. Events whose group has no item get -1.
    """

    def __init__(self, groups: np.ndarray, weights: np.ndarray, n_groups: int):
        order = np.argsort(groups, kind="stable")
        g, w = groups[order], weights[order].astype(np.float64)
        counts = np.bincount(g, minlength=n_groups)
        ends = np.cumsum(counts)
        cum = np.cumsum(w)
        before = np.concatenate([[0.0], cum])[ends - counts]  # total weight of all earlier groups
        totals = np.where(counts > 0, cum[np.maximum(ends - 1, 0)] - before, 1.0)
        keys = g + (cum - before[g]) / totals[g]
        keys[ends[counts > 0] - 1] = np.flatnonzero(counts > 0) + 1.0  # close each group exactly at g + 1
        self._keys, self._items, self._groups = keys, order, g

    def sample(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self._keys, groups + rng.random(len(groups)), side="right")
        pos = np.minimum(pos, len(self._keys) - 1)
        return np.where(self._groups[pos] == groups, self._items[pos], -1)


def _pick(rng: np.random.Generator, options, size: int, p=None) -> np.ndarray:
    return rng.choice(len(options), size=size, p=p)


def _allocate(total: int, shares: np.ndarray) -> np.ndarray:
    """Split `total` items across groups by share, largest remainders first, each group ≥ 1 when possible."""
    exact = shares / shares.sum() * total
    counts = np.floor(exact).astype(int)
    if total >= len(shares):
        counts = np.maximum(counts, 1)
    while counts.sum() > total:
        counts[np.argmax(counts)] -= 1
    for i in np.argsort(counts - exact)[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _users(size: WorldScale, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = size.users
    gender = _pick(rng, GENDERS, n, p=[0.48, 0.48, 0.04])
    age = np.clip(np.round(rng.gamma(shape=7.0, scale=4.8, size=n) + 8), 16, 80).astype(np.int64)
    city_district = [f"{c}/{d}" for c, ds in V.CITIES.items() for d in ds]
    city_of = np.array([i for i, ds in enumerate(V.CITIES.values()) for _ in ds])
    residence = _pick(rng, city_district, n)
    education = _pick(rng, V.EDUCATION_LEVELS, n, p=[0.25, 0.2, 0.4, 0.12, 0.03])
    occupation = _pick(rng, V.OCCUPATIONS, n)
    occupation[age < 22] = V.OCCUPATIONS.index("student")
    occupation[age >= 63] = V.OCCUPATIONS.index("retired")
    education[age < 19] = V.EDUCATION_LEVELS.index("high school")
    education[(age < 23) & (education > V.EDUCATION_LEVELS.index("bachelor"))] = V.EDUCATION_LEVELS.index("bachelor")
    users = pd.DataFrame({
        "user_id": ID_BASE["users"] + np.arange(n, dtype=np.int64),
        "gender": pd.Categorical.from_codes(gender, GENDERS),
        "age": age,
        "residence": pd.Categorical.from_codes(residence, city_district).astype(str),
        "education": pd.Categorical.from_codes(education, V.EDUCATION_LEVELS),
        "occupation": pd.Categorical.from_codes(occupation, V.OCCUPATIONS),
    })
    profile = {"gender": gender, "age_bucket": np.searchsorted(AGE_BUCKETS, age), "city": city_of[residence],
               "education": education, "occupation": occupation}
    return users, profile


def _intents(profile: dict[str, np.ndarray], world: WorldParams, n_hist_ms: int, rng: np.random.Generator):
    """Latent intents per user: slots of sub-industries with weights, plus an optional mid-history drift."""
    n_sub = len(V.SUB_INDUSTRIES)
    n = len(profile["gender"])
    # A hidden linear model from profile to intent affinity: the profile facet carries real signal.
    logits = np.log([s.share for s in V.SUB_INDUSTRIES])[None, :].repeat(n, 0)
    for key, levels in (("gender", 3), ("age_bucket", len(AGE_BUCKETS) + 1), ("city", len(V.CITIES)),
                        ("education", len(V.EDUCATION_LEVELS)), ("occupation", len(V.OCCUPATIONS))):
        logits += rng.normal(0.0, 0.8, size=(levels, n_sub))[profile[key]]
    k_max = world.intents_per_user_max
    noisy = logits + rng.gumbel(size=logits.shape)
    slots = np.argsort(-noisy, axis=1)[:, : k_max + 1]  # one spare for the drift target
    intents, drift_target = slots[:, :k_max], slots[:, k_max]
    n_intents = rng.integers(1, k_max + 1, size=n)
    weights = rng.dirichlet(np.ones(k_max), size=n) * (np.arange(k_max)[None, :] < n_intents[:, None])
    cum_weights = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    drifts = rng.random(n) < world.intent_drift_share
    drift_at = (rng.uniform(0.3, 0.9, size=n) * n_hist_ms).astype(np.int64)
    leisure = np.argsort(-rng.gumbel(size=(n, len(V.LEISURE_CATEGORIES))), axis=1)[:, :2]
    return intents, cum_weights, drifts, drift_at, drift_target, leisure


def _ads(size: WorldScale, world: WorldParams, n_hist_ms: int, rng: np.random.Generator):
    shares = np.array([s.share for s in V.SUB_INDUSTRIES])
    sub = np.repeat(np.arange(len(shares)), _allocate(size.ads, shares))
    n = len(sub)
    titles, descriptions, advertisers, landing = [], [], [], np.empty(n, dtype=np.int64)
    picks = rng.random((n, 8))
    for i, s_idx in enumerate(sub):
        s = V.SUB_INDUSTRIES[s_idx]
        r = picks[i]
        brand = s.brands[int(r[0] * len(s.brands))]
        product = s.products[int(r[1] * len(s.products))]
        a1 = int(r[2] * len(s.attributes))
        a2 = (a1 + 1 + int(r[3] * (len(s.attributes) - 1))) % len(s.attributes)
        mix = np.cumsum(V.LANDING_MIX_BY_INDUSTRY[s.path.split("/")[0]])
        landing[i] = min(int(np.searchsorted(mix, r[4] * mix[-1], side="right")), len(LANDING_TYPES) - 1)
        ctas = V.CALLS_TO_ACTION[LANDING_TYPES[landing[i]]]
        fields = dict(brand=brand, product=product, attribute=s.attributes[a1], attribute2=s.attributes[a2],
                      cta=ctas[int(r[5] * len(ctas))])
        titles.append(V.AD_TITLE_TEMPLATES[int(r[6] * len(V.AD_TITLE_TEMPLATES))].format(**fields))
        descriptions.append(V.AD_DESCRIPTION_TEMPLATES[int(r[7] * len(V.AD_DESCRIPTION_TEMPLATES))].format(**fields))
        advertisers.append(f"{brand} Ltd")
    bid_level = np.array([V.SUB_INDUSTRIES[i].bid_level for i in sub])
    bid = np.round(bid_level * rng.lognormal(0.0, 0.4, n), 4)
    predicted_ctr = np.clip(rng.lognormal(np.log(0.015), 0.5, n), 1e-4, 0.2)
    ecpm = np.round(bid * predicted_ctr * 1000.0, 4)
    is_new = rng.random(n) < world.new_ad_share
    created = np.where(is_new, rng.uniform(0, 1, n) * n_hist_ms, -rng.uniform(0, 1, n) * n_hist_ms).astype(np.int64)
    lifetime = (rng.lognormal(np.log(world.ad_lifetime_days_median), 0.6, n) * MS_PER_DAY).astype(np.int64)
    expires = created + np.maximum(lifetime, MS_PER_DAY)
    status = np.where(expires <= n_hist_ms, 2, np.where(rng.random(n) < world.paused_share, 1, 0))
    popularity = rng.lognormal(0.0, world.popularity_sigma, n) * (ecpm / np.median(ecpm)) ** world.ecpm_popularity_exponent
    columns = dict(sub=sub, created=created, expires=expires, landing=landing, popularity=popularity)
    ads = pd.DataFrame({
        "ad_id": ID_BASE["ads"] + np.arange(n, dtype=np.int64),
        "title": titles,
        "description": descriptions,
        "industry": pd.Categorical.from_codes(sub, [s.path for s in V.SUB_INDUSTRIES]),
        "advertiser": pd.Categorical(advertisers),
        "landing_type": pd.Categorical.from_codes(landing, LANDING_TYPES),
        "bid": bid,
        "ecpm": ecpm,
        "created_at": created,  # ms from history start; turned into timestamps by the caller
        "expires_at": expires,
        "status": pd.Categorical.from_codes(status, ["active", "paused", "expired"]),
    })
    return ads, columns


def _contents(size: WorldScale, world: WorldParams, rng: np.random.Generator):
    cats = V.CONTENT_CATEGORIES
    category = np.repeat(np.arange(len(cats)), _allocate(size.contents, np.ones(len(cats))))
    n = len(category)
    kind = (rng.random(n) < 0.35).astype(np.int64)  # 0 short_video, 1 article
    r = rng.random((n, 2))
    titles = [
        V.CONTENT_TITLE_TEMPLATES[int(r[i, 0] * len(V.CONTENT_TITLE_TEMPLATES))].format(
            topic=(topics := V.CONTENT_TOPICS[cats[c]])[int(r[i, 1] * len(topics))], n=3 + (i * 7) % 28)
        for i, c in enumerate(category)
    ]
    contents = pd.DataFrame({
        "content_id": ID_BASE["contents"] + np.arange(n, dtype=np.int64),
        "title": titles,
        "category": pd.Categorical.from_codes(category, cats),
        "kind": pd.Categorical.from_codes(kind, CONTENT_KINDS),
    })
    return contents, dict(category=category, kind=kind, popularity=rng.lognormal(0.0, world.popularity_sigma, n))


def _queries(size: WorldScale, world: WorldParams, rng: np.random.Generator):
    """Search queries: topics 0..S-1 are sub-industries (commercial), S.. are content categories (leisure)."""
    n_sub, cats = len(V.SUB_INDUSTRIES), V.CONTENT_CATEGORIES
    shares = np.concatenate([np.array([s.share for s in V.SUB_INDUSTRIES]) * 0.7 / n_sub * len(cats),
                             np.full(len(cats), 0.3)])
    topic = np.repeat(np.arange(len(shares)), _allocate(size.queries, shares))
    r = rng.random((len(topic), 5))
    seen, keep_topic, texts = set(), [], []
    for i, t in enumerate(topic):
        first_of_topic = i == 0 or topic[i - 1] != t
        if t < n_sub:
            s = V.SUB_INDUSTRIES[t]
            base = "{product} price" if first_of_topic else V.QUERY_TEMPLATES_COMMERCIAL[int(r[i, 0] * 6)]
            text = base.format(product=s.products[int(r[i, 1] * len(s.products))],
                               brand=s.brands[int(r[i, 2] * len(s.brands))],
                               attribute=s.attributes[int(r[i, 3] * len(s.attributes))])
        else:
            topics = V.CONTENT_TOPICS[cats[t - n_sub]]
            base = "{topic}" if first_of_topic else V.QUERY_TEMPLATES_LEISURE[int(r[i, 0] * 4)]
            text = base.format(topic=topics[int(r[i, 1] * len(topics))])
        if not first_of_topic and r[i, 4] < 0.6:
            text = f"{text} {V.QUERY_MODIFIERS[int(r[i, 4] / 0.6 * len(V.QUERY_MODIFIERS))]}"
        if text not in seen:  # one row per distinct text; a scale asking for more than exist gets fewer
            seen.add(text)
            keep_topic.append(t)
            texts.append(text)
    topic = np.array(keep_topic)
    labels = [s.path for s in V.SUB_INDUSTRIES] + list(cats)
    queries = pd.DataFrame({
        "query_id": ID_BASE["queries"] + np.arange(len(texts), dtype=np.int64),
        "text": texts,
        "topic": pd.Categorical.from_codes(topic, labels),
    })
    return queries, dict(topic=topic, popularity=rng.lognormal(0.0, world.popularity_sigma, len(topic)))


def generate_world(world: WorldParams, snapshot: datetime, size: WorldScale | None = None) -> World:
    size = size or world.size
    seeds = np.random.SeedSequence(world.seed).spawn(6)
    rng_users, rng_intents, rng_ads, rng_contents, rng_queries, rng_events = (np.random.default_rng(s) for s in seeds)
    n_hist = world.history_days * MS_PER_DAY
    n_sub, cats = len(V.SUB_INDUSTRIES), V.CONTENT_CATEGORIES

    users, profile = _users(size, rng_users)
    intents, cum_w, drifts, drift_at, drift_target, leisure = _intents(profile, world, n_hist, rng_intents)
    ads, ad = _ads(size, world, n_hist, rng_ads)
    contents, content = _contents(size, world, rng_contents)
    queries, query = _queries(size, world, rng_queries)
    rng = rng_events

    # Activity per user (negative binomial) and each user's event times, sorted within the user.
    m, k = world.events_per_user_mean, world.events_per_user_dispersion
    counts = rng.negative_binomial(k, k / (k + m), size=size.users) + world.min_events_per_user
    counts = np.minimum(counts, int(20 * m))
    user = np.repeat(np.arange(size.users, dtype=np.int32), counts)  # int32 halves the largest arrays
    key = user.astype(np.int64) * n_hist + rng.integers(0, n_hist, size=len(user))
    key.sort()
    key -= user.astype(np.int64) * n_hist
    ts = key
    del key
    n = len(user)

    # Which intent drives each event; drifted users use their new intent in slot 0 after the drift.
    u = rng.random(n)
    slot = np.zeros(n, dtype=np.int8)
    for j in range(cum_w.shape[1] - 1):
        slot += u > cum_w[user, j]
    sub = intents.astype(np.int16)[user, slot]
    del u
    drifted = (slot == 0) & drifts[user] & (ts >= drift_at[user])
    sub[drifted] = drift_target[user[drifted]]
    del drifted, slot
    on_intent = rng.random(n) >= world.off_intent_rate
    shares = np.array([s.share for s in V.SUB_INDUSTRIES])
    random_sub = np.searchsorted(np.cumsum(shares / shares.sum()), rng.random(n), side="right")
    sub = np.where(on_intent, sub, np.minimum(random_sub, n_sub - 1).astype(np.int16))
    del random_sub
    mix = world.domain_mix
    domain = np.searchsorted(np.cumsum([mix.ad, mix.content, mix.search]), rng.random(n) * (1 - 1e-12),
                             side="right").astype(np.int8)  # 0 ad, 1 content, 2 search
    obj = np.full(n, -1, dtype=np.int64)

    # Ads: sample within the sub-industry among ads live at the event time (rejection rounds).
    ad_sampler = GroupSampler(ad["sub"], ad["popularity"], n_sub)
    todo = np.flatnonzero(domain == 0)
    for _ in range(12):
        pick = ad_sampler.sample(sub[todo], rng)
        ok = pick >= 0
        ok[ok] = (ad["created"][pick[ok]] <= ts[todo[ok]]) & (ts[todo[ok]] < ad["expires"][pick[ok]])
        obj[todo[ok]] = pick[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    domain[todo] = 1  # no live ad in that sub-industry then: the user reads about it instead
    on_intent[todo] = True

    # Content: intent-related categories for part of the on-intent views, leisure categories otherwise.
    cat_index = {c: i for i, c in enumerate(cats)}
    intent_cats = np.full((n_sub, 3), -1)
    for i, s in enumerate(V.SUB_INDUSTRIES):
        intent_cats[i, : len(s.content_categories)] = [cat_index[c] for c in s.content_categories]
    n_intent_cats = (intent_cats >= 0).sum(1)
    leisure_cats = np.array([cat_index[c] for c in V.LEISURE_CATEGORIES])
    is_content = np.flatnonzero(domain == 1)
    follows = on_intent[is_content] & (rng.random(len(is_content)) < world.content_follows_intent)
    s_c = sub[is_content]
    intent_cat = intent_cats[s_c, (rng.random(len(is_content)) * n_intent_cats[s_c]).astype(int)]
    leisure_cat = leisure_cats[leisure[user[is_content], rng.integers(0, 2, len(is_content))]]
    category = np.where(follows, intent_cat, leisure_cat)
    obj[is_content] = GroupSampler(content["category"], content["popularity"], len(cats)).sample(category, rng)

    # Search: commercial queries of the intent's sub-industry, leisure queries otherwise.
    is_search = np.flatnonzero(domain == 2)
    leisure_topic = n_sub + leisure_cats[leisure[user[is_search], rng.integers(0, 2, len(is_search))]]
    topic = np.where(on_intent[is_search], sub[is_search], leisure_topic)
    obj[is_search] = GroupSampler(query["topic"], query["popularity"], n_sub + len(cats)).sample(topic, rng)

    keep = obj >= 0  # a category or topic with no item at this scale drops the event
    user, ts, domain, obj = user[keep], ts[keep], domain[keep], obj[keep]
    content_action = ACTION_CODE["play_video"] + content["kind"][np.minimum(obj, len(content["kind"]) - 1)]
    action = np.select([domain == 0, domain == 2], [ACTION_CODE["click_ad"], ACTION_CODE["search"]],
                       default=content_action).astype(np.int8)

    # Conversions follow a share of clicks, by landing type, before the snapshot and the ad's expiry.
    clicks = np.flatnonzero(domain == 0)
    landing_rate = np.array([V.LANDING_TYPE_CONVERSION[t] for t in LANDING_TYPES])
    converts = rng.random(len(clicks)) < world.conversion_rate * landing_rate[ad["landing"][obj[clicks]]]
    clicks = clicks[converts]
    conv_ts = ts[clicks] + 1000 + rng.exponential(world.conversion_delay_hours * 3_600_000, len(clicks)).astype(np.int64)
    in_time = conv_ts < np.minimum(n_hist, ad["expires"][obj[clicks]])
    clicks, conv_ts = clicks[in_time], conv_ts[in_time]
    user = np.concatenate([user, user[clicks]])
    ts = np.concatenate([ts, conv_ts])
    domain = np.concatenate([domain, np.zeros(len(clicks), dtype=np.int8)])
    action = np.concatenate([action, np.full(len(clicks), ACTION_CODE["convert_ad"], dtype=np.int8)])
    obj = np.concatenate([obj, obj[clicks]])
    order = np.argsort(user.astype(np.int64) * n_hist + ts, kind="stable")
    user, ts, domain, action, obj = user[order], ts[order], domain[order], action[order], obj[order]
    # One event per user and millisecond, so an event's identity is never duplicated.
    distinct = np.ones(len(user), dtype=bool)
    distinct[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    user, ts, domain, action, obj = (a[distinct] for a in (user, ts, domain, action, obj))
    del order, distinct

    id_of_domain = np.array([ID_BASE["ads"], ID_BASE["contents"], ID_BASE["queries"]])
    start = pd.Timestamp(snapshot).tz_convert("UTC") - pd.Timedelta(days=world.history_days)
    start_ms = start.value // 1_000_000
    events = pd.DataFrame({
        "user_id": ID_BASE["users"] + user.astype(np.int64),
        "ts": pd.to_datetime(start_ms + ts, unit="ms", utc=True).astype("datetime64[ms, UTC]"),
        "domain": pd.Categorical.from_codes(domain, ["ad", "content", "search"]),
        "action": pd.Categorical.from_codes(action, list(ACTION_CODE)),
        "object_id": id_of_domain[domain] + obj,
    })
    for column in ("created_at", "expires_at"):
        ads[column] = pd.to_datetime(start_ms + ads[column].to_numpy(), unit="ms", utc=True).astype("datetime64[ms, UTC]")
    return World(users=users, ads=ads, contents=contents, queries=queries, events=events)


def run_generate(params: Params, scale: str | None = None, out_dir: Path | None = None) -> dict[str, int]:
    """Generate the world at `scale` (default: params) and write it atomically to data.generated_dir."""
    world_params = params.world.model_copy(update={"scale": scale}) if scale else params.world
    if world_params.scale not in world_params.scales:
        raise ValueError(f"unknown scale {world_params.scale!r}; params.yaml defines {sorted(world_params.scales)}")
    started = time.perf_counter()
    # the world's own "now", whatever source_dir points at (an import there has a snapshot of its own)
    snapshot = params.data.snapshot_of(params.path(params.data.generated_dir))
    world = generate_world(world_params, snapshot)
    out_dir = out_dir or params.path(params.data.generated_dir)
    manifest = {
        "source": "generated",
        "snapshot_time": snapshot.isoformat(),
        "scale": world_params.scale,
        "seed": world_params.seed,
    }
    counts = write_tables(world.tables(), out_dir, manifest)
    log.info("generated %s in %.1fs into %s", counts, time.perf_counter() - started, out_dir)
    return counts
