"""`leadre prompts build`: the datasets SFT, DPO and evaluation read, written to `prompts.out_dir`.

    sft/train/           main task + auxiliary tasks (column `task`), chat format: prompt / completion messages
    sft/valid/           main task, valid split (early stopping)
    sft/test/            main task, test split; `all_target_ad_ids` lists every ad of the intent in the window
    dpo/train/           prompt / chosen / rejected, from train prompts
    dpo/valid/           the same from valid prompts (held-out preference accuracy)
    README.md            dataset card: counts, token-length percentiles, intent distribution; its YAML header
                         makes `datasets.load_dataset(out_dir, "sft")` (or "dpo") work offline
    card.json            the card's numbers, for DVC and MLflow

Each folder holds Parquet parts, one per chunk of about `users_per_chunk` users (sft/train also `part-aux-<chunk>`,
the chunk's auxiliary tasks): chunks are built concurrently by `workers` threads and memory stays bounded at any
number of users. A user's chunk is a stable hash of the user id (leadre/sharding.py), so `--shard i/n` builds the
chunks i, i + n, … into `<out_dir>.shards/`, and `leadre.prompts.card.merge_prompts` links them into out_dir and
writes the card: the same bytes as one unsharded run.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leadre.config import Params, PromptParams
from leadre.data.contracts import TABLES
from leadre.data.tables import DataError, Finding, read_tables
from leadre.io import atomic_dir
from leadre.prompts import MAIN_TASK, SPLITS, alignment
from leadre.prompts.card import log_card, sum_rows, write_card, write_chunk_stats
from leadre.prompts.pairs import EventLog, PairDraws, Pairs, run_starts, select_pairs
from leadre.prompts.render import Catalogue, Rendered, render
from leadre.prompts.tokens import TokenCounter
from leadre.sharding import ALL, Shard, bucket_of, parts_dir
from leadre.sids.build import load_sid_table

log = logging.getLogger(__name__)
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
AUX_STREAM = 1 << 30  # RNG streams of the chunks' auxiliary tasks (AUX_STREAM + chunk), apart from their pairs'


def _ms(series: pd.Series) -> np.ndarray:
    """Milliseconds since the epoch, without a copy when the column already holds UTC milliseconds."""
    values = series.dt.tz_convert(None).to_numpy() if series.dt.tz is not None else series.to_numpy()
    return values.astype("datetime64[ms]", copy=False).view(np.int64)


def _rows_of(index: pd.Index, keys: np.ndarray) -> np.ndarray:
    """Each key's position in `index` (-1 where absent); one lookup per run of equal keys, as in the
    user-sorted event log, where hashing every row cost seconds at 1M users."""
    starts = np.flatnonzero(run_starts(keys))
    runs = np.diff(np.append(starts, len(keys)))
    return np.repeat(index.get_indexer(keys[starts]).astype(np.int64, copy=False), runs)


def event_log(tables: dict[str, pd.DataFrame]) -> tuple[EventLog, pd.Series]:
    """Events resolved to integer codes; also the object titles (ads first, then contents, then queries)."""
    users, ads, contents, queries, events = (tables[n] for n in ("users", "ads", "contents", "queries", "events"))
    user = _rows_of(pd.Index(users["user_id"]), events["user_id"].to_numpy())
    domain = events["domain"].cat.codes.to_numpy()
    domains = list(events["domain"].cat.categories)
    object_id = events["object_id"].to_numpy()
    obj = np.full(len(events), -1, dtype=np.int64)
    offset, labels = 0, []
    for name, key, dom, label_column in (("ads", "ad_id", "ad", "industry"), ("contents", "content_id", "content", "category"),
                                         ("queries", "query_id", "search", "topic")):
        mask = (domain == domains.index(dom)) if dom in domains else np.zeros(len(domain), dtype=bool)
        obj[mask] = offset + pd.Index(tables[name][key]).get_indexer(object_id[mask])
        labels.append(tables[name][label_column].astype(str).to_numpy())
        offset += len(tables[name])
    object_category = np.concatenate(labels)
    category_codes, categories = pd.factorize(object_category, sort=True)
    actions = events["action"].cat.categories.astype(str).to_numpy()
    starts = np.searchsorted(user, np.arange(len(users) + 1))  # events are sorted by user (validated)
    log_ = EventLog(user=user, ts=_ms(events["ts"]), action=events["action"].cat.codes.to_numpy(),
                    obj=obj, category=category_codes[obj], actions=actions,
                    categories=np.asarray(categories), user_start=starts)
    texts_title = pd.concat([ads["title"], contents["title"], queries["text"]], ignore_index=True).astype(str)
    return log_, texts_title


def _one_message(role: str, texts) -> pa.Array:
    """A chat-format column: one message of `role` per row (TRL's conversational prompt/completion format)."""
    texts = texts.cast(pa.string()) if isinstance(texts, pa.Array) else pa.array(list(texts), pa.string())
    n = len(texts)
    roles = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([role])).cast(pa.string())
    values = pa.StructArray.from_arrays([roles, texts], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), values)


def _messages(user_messages) -> pa.Array:
    return _one_message("user", user_messages)


def _answers(texts) -> pa.Array:
    return _one_message("assistant", texts)


def _id_lists(offsets: np.ndarray, ids: np.ndarray) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(ids, pa.int64()))


class _Writers:
    """One Parquet part file per output folder (e.g. sft/train/part-00003.parquet), opened on first write.

    Each chunk of users writes its own parts, so chunks can run concurrently and the output does not depend on
    how many ran at once.
    """

    def __init__(self, root: Path, part: str):
        self.root, self.part, self.open, self.rows = root, part, {}, {}

    def write(self, name: str, table: pa.Table) -> None:
        if len(table) == 0:
            return
        if name not in self.open:
            (self.root / name).mkdir(parents=True, exist_ok=True)
            self.open[name] = pq.ParquetWriter(self.root / name / f"part-{self.part}.parquet", table.schema,
                                               compression="zstd")
        self.open[name].write_table(table)
        self.rows[name] = self.rows.get(name, 0) + len(table)

    def close(self) -> None:
        for writer in self.open.values():
            writer.close()


def _sft_table(task: str, prompts: pa.Array, answers: pa.Array, **columns) -> pa.Table:
    n = len(prompts)
    return pa.table({"prompt": prompts, "completion": answers, "task": pa.array([task] * n).dictionary_encode(),
                     **{k: v for k, v in columns.items()}})


@dataclass
class PromptSources:
    """Everything rendering reads: the validated tables, ads' S-IDs, the event log and the text catalogue."""

    tables: dict[str, pd.DataFrame]
    ad_sid: np.ndarray  # per ads row
    event_log: EventLog
    catalogue: Catalogue


def _ad_sids(params: Params, ads: pd.DataFrame) -> np.ndarray:
    """Each ads row's S-ID string; an ad without one is a DataError naming it."""
    sid_table = load_sid_table(params.path(params.sids.out_dir))
    ad_sid = pd.Series(sid_table["sid"].to_numpy(), index=sid_table["ad_id"]).reindex(ads["ad_id"])
    if ad_sid.isna().any():
        missing = np.flatnonzero(ad_sid.isna().to_numpy())
        raise DataError([Finding(str(params.path(params.sids.out_dir) / "ad_sids.parquet"),
                                 "every validated ad has a semantic ID", "ads", "ad_id", len(missing),
                                 rows=[int(r) + 1 for r in missing[:5]],
                                 examples=[f"ad_id={ads['ad_id'].iloc[r]}" for r in missing[:5]],
                                 detail="run `leadre sids assign` for new ads")])
    return ad_sid.astype(str).to_numpy()


def read_prompt_tables(params: Params, shard: Shard = ALL) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """The validated tables, with only the events of the users `shard` owns, and each user's chunk.

    The events are filtered as Arrow, one row group at a time, before pandas and the event log see them: a shard of n
    holds and builds 1/n of the largest arrays of the step, where every shard building the whole log was most of its
    fixed cost (and a row group's arrays, freed at once, are reused for the next instead of fresh memory)."""
    folder = params.path(params.data.validated_dir)
    if shard.count == 1:
        tables = read_tables(folder)
        return tables, bucket_of(tables["users"]["user_id"].to_numpy(), chunk_count(len(tables["users"]), params.prompts))
    tables = read_tables(folder, tuple(name for name in TABLES if name != "events"))
    user_ids = tables["users"]["user_id"].to_numpy()
    chunks = chunk_count(len(user_ids), params.prompts)
    events_file = pq.ParquetFile(folder / "events.parquet")
    parts = [events_file.schema_arrow.empty_table()]  # the schema, even for a file without row groups
    for group in range(events_file.num_row_groups):
        part = events_file.read_row_group(group)
        ids = part.column("user_id").to_numpy()  # sorted: a user's events are one run
        starts = np.flatnonzero(run_starts(ids))
        owned = shard.owns_bucket(bucket_of(ids[starts], chunks))
        parts.append(part.filter(pa.array(np.repeat(owned, np.diff(np.append(starts, len(ids)))))))
    # converted as read_tables converts
    tables["events"] = pa.concat_tables(parts).to_pandas(split_blocks=True, self_destruct=True)
    return tables, bucket_of(user_ids, chunks)


def chunk_count(users: int, settings: PromptParams) -> int:
    """How many chunks the users fall into: fixed by the users table and `users_per_chunk`, never by the shards."""
    return -(-users // settings.users_per_chunk)


def load_sources(params: Params, tables: dict[str, pd.DataFrame] | None = None) -> PromptSources:
    """From the validated tables (read here unless the caller already has them; their events frame is consumed)."""
    settings = params.prompts
    tables = read_tables(params.path(params.data.validated_dir)) if tables is None else tables
    ads = tables["ads"]
    ad_sid = _ad_sids(params, ads)

    event_log_, texts_title = event_log(tables)
    del tables["events"]  # now arrays in the event log; the frame would double the largest table in memory
    counter = TokenCounter(settings.token_counter)
    texts_sid = np.concatenate([ad_sid, texts_title.to_numpy()[len(ads):]])
    catalogue = Catalogue.build(tables["users"], texts_sid.tolist(), texts_title.tolist(), event_log_.actions,
                                event_log_.categories, counter, settings.long_term_days)
    return PromptSources(tables, ad_sid, event_log_, catalogue)


def serving_prompts(params: Params, sources: PromptSources, user_ids: np.ndarray,
                    cutoff: pd.Timestamp) -> list[list[dict[str, str]]]:
    """Fresh main-task prompts for `user_ids` at `cutoff` (the near-line service's "now"), as chat messages."""
    rows = pd.Index(sources.tables["users"]["user_id"]).get_indexer(user_ids)
    if (rows < 0).any():
        raise ValueError(f"unknown user ids, e.g. {user_ids[rows < 0][:5].tolist()}")
    cutoff_ms = int(pd.Timestamp(cutoff).value // 1_000_000)
    shown = render(sources.event_log, sources.catalogue, rows.astype(np.int64), np.full(len(rows), cutoff_ms),
                   params.prompts)
    return [[{"role": "user", "content": text}] for text in shown.user_message.to_pylist()]


def run_build_prompts(params: Params, shard: Shard | None = None) -> dict:
    """Build the datasets into prompts.out_dir; with `shard` (i/n), only that shard's chunks of users, into a parts
    folder beside it that `leadre.prompts.card.merge_prompts` turns into prompts.out_dir (the same bytes as one
    unsharded run)."""
    started = time.perf_counter()
    out_dir = params.path(params.prompts.out_dir)
    if shard is not None:
        with atomic_dir(parts_dir(out_dir) / shard.name) as tmp:
            chunks, intents = _build_chunks(params, shard, tmp)
            write_chunk_stats(tmp, chunks, intents)
        summary = {"shard": str(shard), "chunks": len(chunks), "counts": sum_rows(chunks),
                   "seconds": round(time.perf_counter() - started, 2)}
        log.info("prompts shard %s: %s", shard, summary)
        return summary
    with atomic_dir(out_dir) as tmp:
        chunks, intents = _build_chunks(params, ALL, tmp)
        card = write_card(tmp, chunks, intents, params.prompts)
    return log_card(card, started)


def _build_chunks(params: Params, shard: Shard, out: Path) -> tuple[list[dict], np.ndarray]:
    """Render and write the chunks of users `shard` owns; returns each chunk's numbers for the card, and the intents.

    A shard reads only its users' events. A user's chunk is a hash of the user id into a number of chunks fixed by
    the users table alone, and every random draw of a chunk (its pairs', its prompts', its auxiliary tasks') comes
    from streams seeded by its number: no output depends on the shard count.
    """
    settings = params.prompts
    tables, chunk_of_user = read_prompt_tables(params, shard)
    sources = load_sources(params, tables)
    tables, ad_sid, event_log_, catalogue = sources.tables, sources.ad_sid, sources.event_log, sources.catalogue
    ads = tables["ads"]
    protocol = params.evaluate.protocol
    # leave-last-out cuts each user at their own engagements: it needs no snapshot
    snapshot_ms = int(pd.Timestamp(params.data.snapshot_time).value // 1_000_000) if protocol == "temporal" else 0
    ad_intent = ads["industry"].cat.codes.to_numpy()
    intents = ads["industry"].cat.categories.astype(str).to_numpy()
    user_ids = tables["users"]["user_id"].to_numpy()
    n_chunks = chunk_count(len(user_ids), settings)
    pairs = select_pairs(event_log_, ad_intent, snapshot_ms, settings, PairDraws(settings.seed, chunk_of_user),
                         protocol)
    ad_ids = ads["ad_id"].to_numpy()

    ad_sid_text = pa.array(ad_sid, pa.string())  # a chunk takes its answers from it, without Python strings
    context = _Context(event_log_, catalogue, settings, ads, ad_sid_text, ad_ids, user_ids, intents, out,
                       _AuxTexts.build(ads, ad_sid_text))
    chunk_of_pair = chunk_of_user[pairs.user]
    owned = np.flatnonzero(np.bincount(chunk_of_pair, minlength=n_chunks))  # the chunks that have pairs, in order
    chunks = [int(c) for c in owned[shard.owns_bucket(owned)]]

    def build_chunk(chunk: int) -> dict:  # a chunk's pairs are taken in its own thread: the copies run in parallel
        return _build_chunk(context, chunk, pairs.take(np.flatnonzero(chunk_of_pair == chunk)))

    # numpy, pyarrow kernels and Parquet writes release the GIL: threads share the event log without copies.
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        results = list(pool.map(build_chunk, chunks))
    for chunk, result in zip(chunks, results):
        result["chunk"] = chunk
    return results, intents


@dataclass(frozen=True)
class _AuxTexts:
    """Each ad's auxiliary-task texts, made once: a chunk takes its sampled rows (pandas string work per chunk held
    the GIL, so the other chunk's thread waited on it)."""

    tasks: dict[str, tuple[pa.Array, pa.Array]]  # task -> (prompt, answer) per ads row
    industry: pa.Array

    @classmethod
    def build(cls, ads: pd.DataFrame, ad_sid: pa.Array) -> _AuxTexts:
        def strings(values) -> pa.Array:
            return pa.array(np.asarray(values, dtype=object), pa.string())

        return cls({"ad_to_sid": (strings(alignment.ad_to_sid_prompt(ads)), ad_sid),
                    "sid_to_text": (strings(alignment.sid_to_text_prompt(pd.Series(ad_sid.to_numpy(False)))),
                                    strings(alignment.sid_to_text_answer(ads)))},
                   strings(ads["industry"].astype(str)))


@dataclass(frozen=True)
class _Context:
    """What every chunk reads (never writes)."""

    log: EventLog
    catalogue: Catalogue
    settings: PromptParams
    ads: pd.DataFrame
    ad_sid: pa.Array  # per ads row
    ad_ids: np.ndarray
    user_ids: np.ndarray
    intents: np.ndarray
    out: Path
    aux: _AuxTexts


def _build_chunk(ctx: _Context, chunk: int, pairs: Pairs) -> dict:
    """Render and write one chunk of users' pairs, then its auxiliary tasks (sized by its train pairs, into
    `part-aux-<chunk>`, which sorts after every pairs part); seeded by the chunk number, so neither threads nor
    shards change the output."""
    rng = np.random.default_rng([ctx.settings.seed, chunk])
    writers, aux = _Writers(ctx.out, f"{chunk:05d}"), _Writers(ctx.out, f"aux-{chunk:05d}")
    tokens = {split: [] for split in SPLITS}
    events = {split: [] for split in SPLITS}
    intent_counts = np.zeros(len(ctx.intents), dtype=np.int64)
    try:
        shown = render(ctx.log, ctx.catalogue, pairs.user, pairs.cutoff, ctx.settings)
        _write_main(writers, pairs, shown, ctx.ad_sid, ctx.ad_ids, ctx.user_ids, ctx.intents, tokens, events,
                    intent_counts, ctx.settings.train_responses_per_pair)
        _write_titles_prompt(writers, pairs, ctx.log, ctx.catalogue, ctx.settings, ctx.ad_sid, ctx.ad_ids,
                             ctx.user_ids, ctx.intents, rng)
        _write_dpo(writers, pairs, shown, ctx.ads, ctx.ad_sid, ctx.ad_ids, ctx.user_ids, ctx.intents, ctx.settings,
                   rng)
        _write_aux(aux, ctx.aux, ctx.ad_ids, sum(len(t) for t in tokens["train"]), ctx.settings,
                   np.random.default_rng([ctx.settings.seed, AUX_STREAM + chunk]))
    finally:
        writers.close()
        aux.close()
    rows = sum_rows([{"rows": writers.rows}, {"rows": aux.rows}])
    return {"rows": rows, "tokens": tokens, "events": events, "intents": intent_counts}


def _write_main(writers, pairs: Pairs, shown: Rendered, ad_sid, ad_ids, user_ids, intents, tokens, events,
                intent_counts, train_responses: int):
    for code, split in enumerate(SPLITS):
        index = np.flatnonzero(pairs.split == code)
        if len(index) == 0:
            continue
        part = pairs.take(index)
        if split == "train" and train_responses > 1:  # valid and test pairs are scored against all their targets
            part, owner = part.with_responses(train_responses)
            index = index[owner]
        columns = dict(
            intent=pa.array(intents[part.intent]).dictionary_encode(),
            user_id=pa.array(user_ids[part.user]),
            cutoff=pa.array(part.cutoff.astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            target_ad_id=pa.array(ad_ids[part.target_ad]),
            prompt_tokens=pa.array(shown.tokens[index]),
            last_event_ts=pa.array(shown.last_event_ts[index].astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
        )
        columns["all_target_ad_ids"] = _id_lists(part.target_offsets, ad_ids[part.targets])
        writers.write(f"sft/{split}", _sft_table(
            MAIN_TASK, _messages(shown.user_message.take(pa.array(index))), _answers(ad_sid.take(pa.array(part.target_ad))),
            **columns))
        tokens[split].append(shown.tokens[index])
        events[split].append(shown.events_shown[index])
        if split == "train":
            np.add.at(intent_counts, part.intent, 1)


def _write_titles_prompt(writers, pairs: Pairs, event_log_, catalogue, settings, ad_sid, ad_ids, user_ids, intents,
                         rng):
    index = np.flatnonzero((pairs.split == 0) & (rng.random(len(pairs)) < settings.aux_ratio.titles_prompt))
    if len(index) == 0:
        return
    part = pairs.take(index)
    shown = render(event_log_, catalogue, part.user, part.cutoff, settings, ads_as="title")
    writers.write("sft/train", _sft_table(
        "titles_prompt", _messages(shown.user_message), _answers(ad_sid.take(pa.array(part.target_ad))),
        intent=pa.array(intents[part.intent]).dictionary_encode(), user_id=pa.array(user_ids[part.user]),
        cutoff=pa.array(part.cutoff.astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
        target_ad_id=pa.array(ad_ids[part.target_ad]), prompt_tokens=pa.array(shown.tokens),
        last_event_ts=pa.array(shown.last_event_ts.astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
        all_target_ad_ids=_id_lists(part.target_offsets, ad_ids[part.targets])))


def _write_dpo(writers, pairs: Pairs, shown: Rendered, ads, ad_sid, ad_ids, user_ids, intents, settings, rng):
    for code, split in ((0, "train"), (1, "valid")):
        index = np.flatnonzero(pairs.split == code)
        part = pairs.take(index)
        rejected, same = alignment.sample_rejected(part.target_ad, part.cutoff, ads, part.intent,
                                                   settings.dpo_same_intent_rejected, rng)
        found = np.flatnonzero(rejected >= 0)
        if len(found) == 0:
            continue
        chosen, rejected, ecpm = part.target_ad[found], rejected[found], ads["ecpm"].to_numpy()
        writers.write(f"dpo/{split}", pa.table({
            "prompt": _messages(shown.user_message.take(pa.array(index[found]))),
            "chosen": _answers(ad_sid.take(pa.array(chosen))),
            "rejected": _answers(ad_sid.take(pa.array(rejected))),
            "chosen_ad_id": pa.array(ad_ids[chosen]), "rejected_ad_id": pa.array(ad_ids[rejected]),
            "chosen_ecpm": pa.array(ecpm[chosen]), "rejected_ecpm": pa.array(ecpm[rejected]),
            "rejected_same_intent": pa.array(same[found]),
            "intent": pa.array(intents[part.intent[found]]).dictionary_encode(),
            "user_id": pa.array(user_ids[part.user[found]]),
        }))


def _write_aux(writers, aux: _AuxTexts, ad_ids: np.ndarray, n_main: int, settings, rng):
    """Ad ↔ S-ID tasks for `n_main` main-task examples (a chunk's); every ad once before any repeats, within the
    chunk. They reuse the main-task columns (no user, no cut-off), so the files stack into one mixture."""
    for task, ratio in (("ad_to_sid", settings.aux_ratio.ad_to_sid), ("sid_to_text", settings.aux_ratio.sid_to_text)):
        rows = alignment.sample_examples(len(ad_ids), ratio, n_main, rng)
        if len(rows) == 0:
            continue
        prompt, answer = aux.tasks[task]
        taken, n = pa.array(rows), len(rows)
        writers.write("sft/train", _sft_table(
            task, _messages(prompt.take(taken)), _answers(answer.take(taken)),
            intent=aux.industry.take(taken).dictionary_encode(),
            user_id=pa.array(np.full(n, -1, dtype=np.int64)),
            cutoff=pa.array(np.full(n, 0).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            target_ad_id=pa.array(ad_ids[rows]), prompt_tokens=pa.array(np.full(n, -1, dtype=np.int32)),
            last_event_ts=pa.array(np.full(n, 0).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            all_target_ad_ids=_id_lists(np.arange(n + 1), ad_ids[rows])))
