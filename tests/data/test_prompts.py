"""Intent-aware prompts: the golden example, no leakage, the token bound, intent grouping, DPO and aux data."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.data.tables import read_tables, write_tables
from leadre.data.validate import run_validate
from leadre.prompts.build import load_sources, run_build_prompts
from leadre.prompts.pairs import HELD_OUT_DRAWS, PROTOCOLS, TRAIN_CUTOFF_DRAWS, PairDraws, select_pairs
from leadre.prompts.tokens import BUILTIN_MINILM, SID_TOKEN, TokenCounter, minilm_folder
from tests.conftest import write_params

UTC = "UTC"


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC)


def micro_world() -> dict[str, pd.DataFrame]:
    """Two users, four ads in two industries; the snapshot is 2026-11-01, so test starts Oct 25, valid Oct 18."""
    users = pd.DataFrame({"user_id": [1, 2], "gender": pd.Categorical(["female", "male"]), "age": [34, 52],
                          "residence": ["Shenzhen/Nanshan", "Chengdu/Wuhou"],
                          "education": pd.Categorical(["bachelor", "master"]),
                          "occupation": pd.Categorical(["software engineer", "teacher"])})
    ads = pd.DataFrame({
        "ad_id": [1000000001, 1000000002, 1000000003, 1000000004],
        "title": ["Voltix wireless earbuds - noise cancelling", "Unity Bank cashback card: no annual fee",
                  "Arcwave smartwatch | long battery life", "Apex Card travel card - airport lounge access"],
        "description": ["Earbuds.", "A card.", "A watch.", "A card."],
        "industry": pd.Categorical(["ecommerce/electronics", "finance/credit_card", "ecommerce/electronics",
                                    "finance/credit_card"]),
        "advertiser": pd.Categorical(["Voltix Ltd", "Unity Bank Ltd", "Arcwave Ltd", "Apex Card Ltd"]),
        "landing_type": pd.Categorical(["store_product", "lead_form", "store_product", "web_page"]),
        "bid": [1.0, 2.5, 0.8, 2.0], "ecpm": [20.0, 45.0, 12.0, 30.0],
        "created_at": [_ts("2026-09-01")] * 4, "expires_at": [_ts("2026-12-31")] * 4,
        "status": pd.Categorical(["active"] * 4),
    })
    contents = pd.DataFrame({"content_id": [2000000001, 2000000002, 2000000003],
                             "title": ["Earbuds comparison, explained in 5 steps", "Budget planner | part 3",
                                       "funny pets: what nobody tells you"],
                             "category": pd.Categorical(["tech", "money", "comedy"]),
                             "kind": pd.Categorical(["short_video", "article", "short_video"])})
    queries = pd.DataFrame({"query_id": [3000000001, 3000000002], "text": ["best wireless earbuds", "cashback card"],
                            "topic": pd.Categorical(["ecommerce/electronics", "finance/credit_card"])})
    rows = [  # user, time, domain, action, object
        (1, "2026-10-01 10:00", "content", "play_video", 2000000001),
        (1, "2026-10-02 12:00", "search", "search", 3000000001),
        (1, "2026-10-03 09:00", "ad", "click_ad", 1000000001),
        (1, "2026-10-05 20:00", "content", "read_article", 2000000002),
        (1, "2026-10-10 08:00", "ad", "click_ad", 1000000003),
        (1, "2026-10-10 09:30", "ad", "convert_ad", 1000000003),
        (1, "2026-10-20 11:00", "search", "search", 3000000002),
        (1, "2026-10-21 13:00", "ad", "click_ad", 1000000002),
        (1, "2026-10-26 18:00", "content", "play_video", 2000000003),  # after every cut-off of user 1
        (1, "2026-10-27 19:00", "ad", "click_ad", 1000000004),
        (1, "2026-10-28 10:00", "ad", "click_ad", 1000000001),
        (2, "2026-10-02 08:00", "content", "play_video", 2000000003),
        (2, "2026-10-04 08:00", "content", "read_article", 2000000002),
        (2, "2026-10-09 08:00", "ad", "click_ad", 1000000002),
        (2, "2026-10-12 08:00", "search", "search", 3000000002),
    ]
    events = pd.DataFrame(rows, columns=["user_id", "ts", "domain", "action", "object_id"])
    events["ts"] = pd.to_datetime(events["ts"], utc=True).astype("datetime64[ms, UTC]")
    for column in ("domain", "action"):
        events[column] = events[column].astype("category")
    for frame in (ads,):
        for column in ("created_at", "expires_at"):
            frame[column] = frame[column].astype("datetime64[ms, UTC]")
    return {"users": users, "ads": ads, "contents": contents, "queries": queries, "events": events}


MICRO_SIDS = {1000000001: "<a_1><b_2><c_3><d_0>", 1000000002: "<a_4><b_0><c_1><d_0>",
              1000000003: "<a_1><b_2><c_5><d_0>", 1000000004: "<a_4><b_0><c_2><d_0>"}

GOLDEN_TEST_PROMPT = (
    "Profile: female, 34, Shenzhen/Nanshan, bachelor, software engineer\n"
    "Interests (30 days): ecommerce/electronics:4, finance/credit_card:2, money:1, tech:1\n"
    "Recent: 23d watch Earbuds comparison, explained in 5 steps; "
    "22d search best wireless earbuds; 21d click <a_1><b_2><c_3><d_0>; 19d read Budget planner | part 3; "
    "14d click <a_1><b_2><c_5><d_0>; 14d convert <a_1><b_2><c_5><d_0>; 4d search cashback card; "
    "3d click <a_4><b_0><c_1><d_0>\n"
    "Which ad next?"
)


def _write_sids(params: Params, sids: dict[int, str]) -> None:
    out = params.path(params.sids.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"ad_id": list(sids), "sid": list(sids.values()), "live": True}).to_parquet(out / "ad_sids.parquet")


@pytest.fixture
def micro(tmp_path) -> Params:
    # a token bound wide enough for every micro event: these tests are about what a prompt says, not its cut;
    # both users held out for validation, so each has a valid pair and trains only before the valid week
    params = write_params(tmp_path, {"prompts.aux_ratio": {"ad_to_sid": 0.5, "sid_to_text": 0.5, "titles_prompt": 1.0},
                                     "prompts.max_prompt_tokens": 384, "prompts.valid_user_share": 1.0})
    write_tables(micro_world(), params.path(params.data.generated_dir), {"source": "test"})
    run_validate(params)  # the micro world is itself valid data
    _write_sids(params, MICRO_SIDS)
    run_build_prompts(params)
    return params


def _sft(params: Params, split: str) -> pd.DataFrame:
    return pd.read_parquet(params.path(params.prompts.out_dir) / "sft" / split)


def test_golden_prompt_of_one_user(micro):
    test = _sft(micro, "test")
    user1 = test[test["user_id"] == 1].sort_values("intent")
    assert user1["prompt"].iloc[0][0]["content"] == GOLDEN_TEST_PROMPT
    # Two intents in the test window → two pairs, each answered by the first ad of its intent.
    assert user1["intent"].astype(str).tolist() == ["ecommerce/electronics", "finance/credit_card"]
    assert [c[0]["content"] for c in user1["completion"]] == [MICRO_SIDS[1000000001], MICRO_SIDS[1000000004]]
    assert [m["role"] for m in user1["prompt"].iloc[0]] == ["user"]


def test_feature_ablations_drop_exactly_their_facet(tmp_path):
    """The paper's ablation: a switched-off facet leaves the prompt, headers and all; the rest stays as it was."""
    params = write_params(tmp_path, {"prompts.features": {"profile": False, "long_term": True, "short_term": True,
                                                          "content": False}, "prompts.max_prompt_tokens": 384})
    write_tables(micro_world(), params.path(params.data.generated_dir), {"source": "test"})
    run_validate(params)
    _write_sids(params, MICRO_SIDS)
    run_build_prompts(params)
    test = _sft(params, "test")
    prompt = test[test["user_id"] == 1]["prompt"].iloc[0][0]["content"]
    assert prompt == (
        "Interests (30 days): ecommerce/electronics:4, finance/credit_card:2\n"
        "Recent: 22d search best wireless earbuds; 21d click <a_1><b_2><c_3><d_0>; "
        "14d click <a_1><b_2><c_5><d_0>; 14d convert <a_1><b_2><c_5><d_0>; 4d search cashback card; "
        "3d click <a_4><b_0><c_1><d_0>\n"
        "Which ad next?")


def test_splits_follow_time(micro):
    valid, train = _sft(micro, "valid"), _sft(micro, "train")
    assert valid[valid["user_id"] == 1]["completion"].map(lambda c: c[0]["content"]).tolist() == [MICRO_SIDS[1000000002]]
    main = train[train["task"] == "main"]
    # User 1's only train cut-off with 3+ events of history is the Oct 10 click on the smartwatch.
    assert main[main["user_id"] == 1]["cutoff"].tolist() == [_ts("2026-10-10 08:00")]
    assert (main["cutoff"] < _ts("2026-10-18")).all()


def test_a_train_pair_answers_with_each_of_its_first_targets(tmp_path):
    """`train_responses_per_pair` N: a train pair is one row per distinct target ad of its intent and window, the first
    N in engagement order, all with the pair's prompt; valid and test keep one row per pair (they are scored against
    every target)."""
    world = micro_world()
    # user 1 clicks the earbuds the day after the smartwatch: a second electronics target of the Oct 10 cut-off
    extra = pd.DataFrame([(1, _ts("2026-10-11 10:00"), "ad", "click_ad", 1000000001)], columns=world["events"].columns)
    events = pd.concat([world["events"].astype({"domain": str, "action": str}), extra], ignore_index=True)
    events = events.sort_values(["user_id", "ts"], kind="stable", ignore_index=True)
    world["events"] = events.astype({"domain": "category", "action": "category"})
    built = {}
    for n in (1, 2, 3):
        params = write_params(tmp_path / str(n), {"prompts.max_prompt_tokens": 384, "prompts.valid_user_share": 1.0,
                                                  "prompts.train_responses_per_pair": n})
        write_tables(world, params.path(params.data.generated_dir), {"source": "test"})
        run_validate(params)
        _write_sids(params, MICRO_SIDS)
        run_build_prompts(params)
        built[n] = {split: _sft(params, split) for split in ("train", "valid", "test")}

    def pair_rows(train: pd.DataFrame) -> pd.DataFrame:
        main = train[(train["task"] == "main") & (train["user_id"] == 1)]
        return main[main["cutoff"] == _ts("2026-10-10 08:00")]

    one, two = pair_rows(built[1]["train"]), pair_rows(built[2]["train"])
    assert [c[0]["content"] for c in one["completion"]] == [MICRO_SIDS[1000000003]]
    assert [c[0]["content"] for c in two["completion"]] == [MICRO_SIDS[1000000003], MICRO_SIDS[1000000001]]
    assert two["target_ad_id"].tolist() == [1000000003, 1000000001]
    assert two["prompt"].map(lambda m: m[0]["content"]).nunique() == 1
    assert two["prompt"].iloc[0][0]["content"] == one["prompt"].iloc[0][0]["content"]
    # a pair has only as many rows as distinct targets: 3 allowed, the same two rows
    assert pair_rows(built[3]["train"])["target_ad_id"].tolist() == [1000000003, 1000000001]
    for split in ("valid", "test"):
        pd.testing.assert_frame_equal(built[2][split], built[1][split])
    main_rows = {n: (b["train"]["task"] == "main").sum() for n, b in built.items()}
    assert main_rows[2] == main_rows[3] == main_rows[1] + 1  # no other pair has a second target


def test_no_future_event_in_any_prompt(micro):
    for split in ("train", "valid", "test"):
        frame = _sft(micro, split)
        for _, row in frame[frame["user_id"] == 1].iterrows():
            assert "funny pets" not in row["prompt"][0]["content"]  # watched after every cut-off of user 1


@pytest.fixture(scope="module")
def tiny_prompts(tmp_path_factory) -> Params:
    params = write_params(tmp_path_factory.mktemp("prompts"), {"prompts.max_prompt_tokens": 160,
                                                              "prompts.users_per_chunk": 150})
    from leadre.data.generate import run_generate
    run_generate(params)
    run_validate(params)
    ads = read_tables(params.path(params.data.validated_dir), ("ads",))["ads"]
    _write_sids(params, {a: f"<a_{i % 7}><b_{i // 7 % 7}><c_{i // 49}><d_0>" for i, a in enumerate(ads["ad_id"])})
    run_build_prompts(params)
    return params


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_shards_pairs_are_its_users_pairs_of_the_whole_run(tiny_prompts, protocol):
    """A prompts shard reads only its users' events: from that log alone it must select the same rows, in the same
    order, as one run over every user gives them (each chunk draws from its own streams)."""
    from leadre.prompts.build import read_prompt_tables
    from leadre.sharding import Shard

    def pairs_of(shard: Shard):
        tables, chunk_of_user = read_prompt_tables(tiny_prompts, shard)
        sources = load_sources(tiny_prompts, tables)
        return chunk_of_user, select_pairs(
            sources.event_log, sources.tables["ads"]["industry"].cat.codes.to_numpy(),
            int(pd.Timestamp(tiny_prompts.data.snapshot_time).value // 1_000_000), tiny_prompts.prompts,
            PairDraws(3, chunk_of_user), protocol)

    chunk_of_user, whole = pairs_of(Shard(0, 1))
    shard = Shard(1, 3)
    _, part = pairs_of(shard)
    expected = whole.take(np.flatnonzero(shard.owns_bucket(chunk_of_user)[whole.user]))
    assert 0 < len(part) < len(whole) and (part.split == 0).any() and (part.split > 0).any()
    for field in ("user", "cutoff", "split", "target_ad", "target_ts", "intent", "targets", "target_offsets"):
        assert np.array_equal(getattr(part, field), getattr(expected, field)), field


def test_each_chunk_draws_from_its_own_streams():
    """A user's draws depend on its chunk alone: the same numbers whatever other chunks' users are drawn for."""
    chunk_of_user = np.array([0, 1, 0, 2, 1, 0])
    draws = PairDraws(7, chunk_of_user)
    every = draws.uniform(TRAIN_CUTOFF_DRAWS, np.array([0, 0, 1, 2, 3, 4, 5, 5]))
    some = draws.uniform(TRAIN_CUTOFF_DRAWS, np.array([0, 0, 2, 5, 5]))  # chunk 0's rows, in the same order
    assert np.array_equal(some, every[[0, 1, 3, 6, 7]])
    assert len(set(every.tolist())) == len(every) and ((every >= 0) & (every < 1)).all()
    assert not np.array_equal(draws.uniform(HELD_OUT_DRAWS, np.arange(6)), draws.uniform(TRAIN_CUTOFF_DRAWS, np.arange(6)))


@pytest.mark.parametrize("ads_as", ["sid", "title"])
def test_rendering_in_slices_gives_the_prompts_of_one_pass(tiny_prompts, monkeypatch, ads_as):
    """Rendering goes PAIRS_PER_SLICE pairs at a time for speed; slice edges must not show in any prompt."""
    import leadre.prompts.render as rendering

    sources = load_sources(tiny_prompts)
    pairs = select_pairs(sources.event_log, sources.tables["ads"]["industry"].cat.codes.to_numpy(),
                         int(pd.Timestamp(tiny_prompts.data.snapshot_time).value // 1_000_000), tiny_prompts.prompts,
                         PairDraws(3), "temporal")
    args = (sources.event_log, sources.catalogue, pairs.user, pairs.cutoff, tiny_prompts.prompts, ads_as)
    whole = rendering.render(*args)
    monkeypatch.setattr(rendering, "PAIRS_PER_SLICE", 7)  # slices that cut through users' pairs
    sliced = rendering.render(*args)
    assert len(pairs) > 10 * 7 and whole.events_shown.sum() > 0
    assert sliced.user_message.equals(whole.user_message)
    for field in ("tokens", "events_shown", "last_event_ts"):
        assert np.array_equal(getattr(sliced, field), getattr(whole, field)), field


def test_prompts_use_only_events_before_their_cut_off(tiny_prompts):
    events = read_tables(tiny_prompts.path(tiny_prompts.data.validated_dir), ("events",))["events"]
    for split in ("train", "valid", "test"):
        main = _sft(tiny_prompts, split)
        main = main[main["task"] == "main"]
        assert (main["last_event_ts"] < main["cutoff"]).all()
        # The response is an ad the user engaged with at or after the cut-off.
        engaged = events[events["action"].isin(["click_ad", "convert_ad"])]
        joined = main.merge(engaged, left_on=["user_id", "target_ad_id"], right_on=["user_id", "object_id"])
        ok = joined[joined["ts"] >= joined["cutoff"]].groupby(["user_id", "cutoff", "target_ad_id"]).size()
        assert len(ok) == len(main)


def test_training_reaches_the_test_cut_off_except_for_held_out_validation_users(tiny_prompts):
    """Train pairs may use the valid week (as the ID baselines do at test time), but never a held-out user's, and
    never anything at or after the test cut-off."""
    p = tiny_prompts.prompts
    test_cut = pd.Timestamp(tiny_prompts.data.snapshot_time) - pd.Timedelta(days=p.holdout_days)
    valid_cut = test_cut - pd.Timedelta(days=p.holdout_days)
    train, valid = _sft(tiny_prompts, "train"), _sft(tiny_prompts, "valid")
    train = train[train["task"] == "main"]
    held_out = set(valid["user_id"])
    assert held_out and (valid["cutoff"] == valid_cut).all()
    of_held_out = train["user_id"].isin(held_out)
    assert (train.loc[of_held_out, "cutoff"] < valid_cut).all()
    assert (train["cutoff"] < test_cut).all()
    assert (train.loc[~of_held_out, "cutoff"] >= valid_cut).any()  # the others do train on the valid week
    # every response is an engagement before the user's end of training
    events = read_tables(tiny_prompts.path(tiny_prompts.data.validated_dir), ("events",))["events"]
    engaged = events[events["action"].isin(["click_ad", "convert_ad"])]
    joined = train.merge(engaged, left_on=["user_id", "target_ad_id"], right_on=["user_id", "object_id"])
    end = np.where(joined["user_id"].isin(held_out), valid_cut, test_cut)
    ok = joined[(joined["ts"] >= joined["cutoff"]) & (joined["ts"] < end)]
    assert len(ok.groupby(["user_id", "cutoff", "target_ad_id"])) == len(train)
    # about valid_user_share of the users with a valid-week engagement are held out, not all of them
    in_valid_week = engaged[(engaged["ts"] >= valid_cut) & (engaged["ts"] < test_cut)]["user_id"].nunique()
    assert 0.1 * in_valid_week < len(held_out) < 0.5 * in_valid_week


def test_prompt_token_bound_holds_for_the_real_tokenizer(tiny_prompts):
    counter = TokenCounter(tiny_prompts.prompts.token_counter)
    main = _sft(tiny_prompts, "train")
    main = main[main["task"].isin(["main", "titles_prompt"])]
    exact = np.array([counter.exact(p[0]["content"]) for p in main["prompt"]])
    assert exact.max() <= tiny_prompts.prompts.max_prompt_tokens
    assert (exact <= main["prompt_tokens"].to_numpy()).all()  # the fast count never under-counts
    assert (main["prompt_tokens"] > 0.8 * tiny_prompts.prompts.max_prompt_tokens).mean() > 0.3  # the bound bites


def test_token_counts_equal_the_transformers_tokenizer(tiny_prompts):
    """The counter reads tokenizer.json with `tokenizers` alone; the count must be what AutoTokenizer gives, on whole
    prompts longer than the file's own 128-token truncation."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    main = _sft(tiny_prompts, "train")
    texts = [p[0]["content"] for p in main["prompt"][:300]] + ["Ünïcödé ｆｕｌｌ-width naïve 日本語 İstanbul ﬁ"]
    expected = [len(SID_TOKEN.findall(t)) + len(reference(SID_TOKEN.sub(" ", t), add_special_tokens=False)["input_ids"])
                for t in texts]
    assert max(expected) > 128
    counter = TokenCounter(BUILTIN_MINILM)
    assert [counter.exact(t) for t in texts] == expected
    assert counter.count(texts).tolist() == expected  # WordPiece: the per-word sum is exact


def test_dpo_pairs_prefer_higher_ecpm_among_relevant_ads(tiny_prompts):
    folder = tiny_prompts.path(tiny_prompts.prompts.out_dir)
    dpo = pd.read_parquet(folder / "dpo" / "train")
    assert len(dpo) > 0 and (dpo["chosen_ecpm"] > dpo["rejected_ecpm"]).all()
    train = _sft(tiny_prompts, "train")
    engaged = set(zip(train["user_id"], train["target_ad_id"]))
    assert all((u, a) in engaged for u, a in zip(dpo["user_id"], dpo["chosen_ad_id"]))  # chosen = engaged ad
    share = dpo["rejected_same_intent"].mean()
    assert abs(share - tiny_prompts.prompts.dpo_same_intent_rejected) < 0.15


def test_auxiliary_tasks_follow_their_ratios(tiny_prompts):
    """Per chunk of users, beside its pairs (so a shard writes its chunks' tasks and the merge reads no table)."""
    folder = tiny_prompts.path(tiny_prompts.prompts.out_dir) / "sft" / "train"
    ratio = tiny_prompts.prompts.aux_ratio
    chunks = sorted(f.name for f in folder.glob("part-0*.parquet"))
    assert len(chunks) > 1
    n_ads = len(read_tables(tiny_prompts.path(tiny_prompts.data.validated_dir), ("ads",))["ads"])
    for name in chunks:
        main = pd.read_parquet(folder / name, columns=["task"])["task"].value_counts()["main"]
        aux = pd.read_parquet(folder / name.replace("part-", "part-aux-"), columns=["task", "target_ad_id"])
        counts = aux["task"].value_counts()
        assert counts["ad_to_sid"] == round(ratio.ad_to_sid * main)
        assert counts["sid_to_text"] == round(ratio.sid_to_text * main)
        # every ad once before any repeats
        first = aux[aux["task"] == "ad_to_sid"]["target_ad_id"].head(n_ads)
        assert first.is_unique
    train = _sft(tiny_prompts, "train")
    counts = train["task"].value_counts()
    assert abs(counts["titles_prompt"] / counts["main"] - ratio.titles_prompt) < 0.1
    titles = train[train["task"] == "titles_prompt"]["prompt"].map(lambda p: p[0]["content"])
    assert not titles.str.contains("click <a_").any()  # ads written as titles, not S-IDs


def _hashes(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.parquet")}


def test_same_inputs_same_datasets_whatever_the_threads(tiny_prompts):
    folder = tiny_prompts.path(tiny_prompts.prompts.out_dir)
    before = _hashes(folder)
    assert len([name for name in before if name.startswith("sft/train/")]) > 2  # several chunks, plus aux
    one_thread = tiny_prompts.model_copy(update={"prompts": tiny_prompts.prompts.model_copy(update={"workers": 1})})
    run_build_prompts(one_thread)
    assert _hashes(folder) == before


def test_datasets_load_with_hugging_face_datasets(tiny_prompts):
    import datasets

    folder = str(tiny_prompts.path(tiny_prompts.prompts.out_dir))
    sft, dpo = datasets.load_dataset(folder, "sft"), datasets.load_dataset(folder, "dpo")
    assert set(sft) == {"train", "valid", "test"} and set(dpo) == {"train", "valid"}
    assert sft["train"][0]["completion"][0]["role"] == "assistant"


def test_an_ad_without_semantic_id_is_a_clear_error(tmp_path):
    from leadre.data.tables import DataError

    params = write_params(tmp_path)
    write_tables(micro_world(), params.path(params.data.generated_dir), {"source": "test"})
    run_validate(params)
    _write_sids(params, {k: v for k, v in MICRO_SIDS.items() if k != 1000000003})
    with pytest.raises(DataError, match=r"every validated ad has a semantic ID.*sids assign.*row 3: ad_id=1000000003"):
        run_build_prompts(params)
    assert not params.path(params.prompts.out_dir).exists()


def test_card_reports_the_recent_events_kept_and_the_default_keeps_several(tmp_path, tiny_world):
    """The short-term facet must reach the model: at the default token bound most prompts keep several events."""
    params = write_params(tmp_path)  # the repository's default prompt settings, at the tiny scale
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    run_validate(params)
    ads = read_tables(params.path(params.data.validated_dir), ("ads",))["ads"]
    # 5-token S-IDs, as the default codebooks make them
    _write_sids(params, {a: f"<a_{i % 7}><b_{i // 7 % 7}><c_{i // 49}><d_0><e_0>" for i, a in enumerate(ads["ad_id"])})
    card = run_build_prompts(params)
    for split in ("train", "test"):
        recent = card["recent_events"][split]
        assert recent["none_share"] < 0.05 and recent["p50"] >= 3, (split, recent)
    readme = (params.path(params.prompts.out_dir) / "README.md").read_text(encoding="utf-8")
    assert "Recent events the main task's prompts keep" in readme


def test_a_cutoff_half_life_draws_recent_clicks_more_often(tmp_path, tiny_world):
    """prompts.train_cutoff_half_life_days leans the train cut-offs towards the end of training; off, it is uniform."""
    means = {}
    for half_life in (None, 3.0):
        params = write_params(tmp_path / str(half_life), {"prompts.train_cutoff_half_life_days": half_life,
                                                          "prompts.max_train_cutoffs_per_user": 2})
        shutil.copytree(tiny_world, params.path(params.data.generated_dir))
        run_validate(params)
        ads = read_tables(params.path(params.data.validated_dir), ("ads",))["ads"]
        _write_sids(params, {a: f"<a_{i % 7}><b_{i // 7 % 7}><c_{i // 49}><d_0>" for i, a in enumerate(ads["ad_id"])})
        run_build_prompts(params)
        train = _sft(params, "train")
        cutoffs = train[train["task"] == "main"].drop_duplicates(["user_id", "cutoff"])["cutoff"]
        means[half_life] = cutoffs.mean()
        test_cut = pd.Timestamp(params.data.snapshot_time) - pd.Timedelta(days=params.prompts.holdout_days)
        assert (cutoffs < test_cut).all()
    assert means[3.0] - means[None] > pd.Timedelta(days=3)


@pytest.mark.parametrize(("ad_events", "recent"), [
    (0, "Recent: 4d search cashback card; 3d click <a_4><b_0><c_1><d_0>"),
    (2, "Recent: 14d convert <a_1><b_2><c_5><d_0>; 3d click <a_4><b_0><c_1><d_0>"),
])
def test_the_newest_ad_engagements_are_kept_before_other_events(tmp_path, ad_events, recent):
    """At a bound that fits two events, prompts.ad_events keeps the newest ad engagements first (oldest others go
    first), in time order; 0 is the plain newest-first cut."""
    params = write_params(tmp_path, {"prompts.max_prompt_tokens": 70, "prompts.valid_user_share": 1.0,
                                     "prompts.ad_events": ad_events})
    write_tables(micro_world(), params.path(params.data.generated_dir), {"source": "test"})
    run_validate(params)
    _write_sids(params, MICRO_SIDS)
    run_build_prompts(params)
    test = _sft(params, "test")
    assert test[test["user_id"] == 1]["prompt"].iloc[0][0]["content"].split("\n")[2] == recent


def test_a_cutoff_half_life_prefers_recent_clicks_even_decades_back(tmp_path):
    """An imported log can reach back decades: 2^(age / half-life) overflowed to inf there, every old click tied, and
    the oldest were drawn first, the opposite of the half-life's intent. Clicks a year apart differ in weight by 2^26
    at a 14-day half-life: the newest are the ones drawn."""
    from leadre.prompts.pairs import EventLog, _engagements, _train_cutoffs

    params = write_params(tmp_path, {"prompts.train_cutoff_half_life_days": 14.0,
                                     "prompts.max_train_cutoffs_per_user": 3, "prompts.min_history_events": 1})
    clicks, year_ms = 12, 365 * 86_400_000
    ts = np.array([pd.Timestamp("1960-01-01").value // 1_000_000 + i * year_ms for i in range(clicks)])
    zeros = np.zeros(clicks, dtype=np.int64)
    log = EventLog(user=zeros, ts=ts, action=zeros, obj=np.arange(clicks), category=zeros,
                   actions=np.array(["click_ad"]), categories=np.array(["retail"]), user_start=np.array([0, clicks]))
    engagements = _engagements(log)
    train_end = np.full(clicks, pd.Timestamp("2026-01-01").value // 1_000_000)
    _, cutoffs, _, _ = _train_cutoffs(log, engagements, train_end, params.prompts, PairDraws(0))
    assert list(cutoffs) == list(ts[-3:])


def test_event_lookups_hold_beyond_two_million_users():
    """A cut-off's events are found by binary search over (user, time) packed into one int64. With 2^42 ms per user
    the key wrapped past 2^21 users (2.1M), the keys stopped being sorted and a prompt could show another user's
    events; a 100M-user log (docs/scaling.md) must still resolve every user's own events."""
    from leadre.prompts.pairs import EventLog

    users = np.array([0, 0, 2**21 - 1, 2**21, 2**21, 60_000_000], dtype=np.int64)
    day = 86_400_000
    ts = np.array([0, 5, 1, 2, 400, 3], dtype=np.int64) * day + pd.Timestamp("2026-01-01").value // 1_000_000
    log = EventLog(user=users, ts=ts, action=np.zeros(6, dtype=np.int8), obj=np.arange(6),
                   category=np.zeros(6, dtype=np.int64), actions=np.array(["click_ad"]),
                   categories=np.array(["retail"]), user_start=np.array([0]))
    # each user's first event at or after a time: before all events, between, after all (and decades away)
    queries = [(0, ts[0] - 30 * day, 0), (0, ts[1], 1), (0, ts[1] + 1, 2), (2**21 - 1, ts[2], 2),
               (2**21, ts[0], 3), (2**21, ts[3] + 1, 4), (2**21, ts[4] + 1, 5), (60_000_000, ts[5] + 40 * 365 * day, 6),
               (60_000_000, ts[5] - 40 * 365 * day, 5)]
    user, at, expected = (np.array(column) for column in zip(*queries))
    assert list(log.position(user, at)) == list(expected)
