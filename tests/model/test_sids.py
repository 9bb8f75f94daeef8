"""Semantic IDs on the tiny world: unique, grounded by the trie, deterministic, cached, and stable for new ads.

The validated world (once per session, tests/conftest.py) and one embedding cache (once per module) are shared:
encoding is the slow part, and most tests are about what happens after it. Tests about encoding itself use a fresh
cache.
"""

from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.data.tables import read_tables
from leadre.sids import SidTrie, format_sid, sid_tokens, sid_vocabulary
from leadre.bundle import CODEBOOKS_FILE, QUANTIZER_FILE, SID_REPORT_FILE, SID_TABLE
from leadre.sids.build import (
    SidCollisionError,
    ad_texts,
    disambiguate,
    level_columns,
    load_sid_table,
    log_to_mlflow,
    run_assign_sids,
    run_build_sids,
)
from leadre.sids.encoder import EmbeddingCache, embed_texts, text_digests
from leadre.sids.quantize import (
    RQVAE_WEIGHTS_FILE,
    ResidualKMeans,
    load_quantizer,
)
from tests.conftest import write_params

KMEANS = {"sids.method": "rq_kmeans"}
FAST_RQVAE = {"latent_dim": 16, "hidden_dim": 64, "epochs": 3, "learning_rate": 0.001, "commitment": 0.25,
              "batch_size": 64}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


def make_workspace(root: Path, validated: Path, cache: Path | None = None, overrides: dict | None = None) -> Params:
    """Params rooted in `root` with the validated tiny world; `cache` (absolute) shares embeddings across tests."""
    overrides = dict(overrides or {})
    if cache is not None:
        overrides["sids.embeddings_cache"] = str(cache)
    params = write_params(root, overrides)
    shutil.copytree(validated, params.path(params.data.validated_dir))
    return params


def ads_of(params: Params) -> pd.DataFrame:
    return read_tables(params.path(params.data.validated_dir), names=("ads",))["ads"]


def write_ads(params: Params, ads: pd.DataFrame) -> None:
    ads.to_parquet(params.path(params.data.validated_dir) / "ads.parquet", index=False)


def out_dir(params: Params) -> Path:
    return params.path(params.sids.out_dir)


def live_trie(table: pd.DataFrame) -> SidTrie:
    """The trie generation builds from the table (leadre/decode/recommender.py): the live ads' S-IDs."""
    return SidTrie.from_sids(table.loc[table["live"], "sid"])


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory, validated, shared_cache):
    """One rq_kmeans build, otherwise at the repository's params: (params, report, table). The RQ-VAE (the default
    method) has tests of its own below."""
    params = make_workspace(tmp_path_factory.mktemp("built"), validated, shared_cache, KMEANS)
    report = run_build_sids(params)
    return params, report, load_sid_table(out_dir(params))


def test_every_ad_gets_one_unique_well_formed_sid(built):
    params, report, table = built
    ads = ads_of(params)
    levels = params.sids.levels
    assert list(table.columns) == ["ad_id", "sid", "live", *level_columns(levels)]
    assert str(table["ad_id"].dtype) == "int64" and table["live"].dtype == bool
    assert sorted(table["ad_id"]) == sorted(ads["ad_id"])
    assert table["sid"].is_unique
    codes = table[level_columns(levels)].to_numpy()
    assert (codes[:, :levels] < params.sids.codebook_size).all() and (codes >= 0).all()
    assert (codes[:, levels] < params.sids.max_collisions).all()
    assert [format_sid(row) for row in codes] == table["sid"].tolist()
    assert report["ads"] == len(ads) and 0.0 <= report["collision_rate"] < 1.0
    assert set(report["utilisation"]) == {f"level_{i}" for i in range(levels)}
    assert report["reconstruction"]["relative_error"] < 1.0  # better than predicting the mean embedding


def test_disambiguation_counts_up_within_a_prefix_by_ad_id(built):
    params, _, table = built
    *prefix, last = level_columns(params.sids.levels)
    for _, group in table.groupby(prefix):
        assert group.sort_values("ad_id")[last].tolist() == list(range(len(group)))


def test_disambiguation_does_not_depend_on_row_order():
    codes = np.array([[1, 2], [1, 2], [0, 5], [1, 2]])
    ad_ids = np.array([30, 10, 7, 20])
    assert disambiguate(codes, ad_ids, 3).tolist() == [2, 0, 0, 1]
    shuffled = [3, 0, 2, 1]
    assert disambiguate(codes[shuffled], ad_ids[shuffled], 3).tolist() == [1, 2, 0, 0]
    with pytest.raises(SidCollisionError, match="max_collisions = 2"):
        disambiguate(codes, ad_ids, 2)


def test_trie_holds_live_ads_and_only_them(built):
    params, report, table = built
    trie = live_trie(table)
    active = set(ads_of(params).query("status == 'active'")["ad_id"])
    assert set(table.loc[table["live"], "ad_id"]) == active
    assert [trie.contains(sid) for sid in table["sid"]] == table["live"].tolist()
    assert len(trie) == report["live_ads"] == len(active) > 0
    assert not trie.contains("<a_0>") and not trie.contains("garbage")


def test_trie_children_are_exactly_the_valid_next_tokens(built):
    params, _, table = built
    live = table.loc[table["live"], "sid"].map(lambda s: tuple(sid_tokens(s))).tolist()
    trie = live_trie(table)
    for depth in range(params.sids.levels + 1):
        for prefix in {tokens[:depth] for tokens in live}:
            expected = {tokens[depth] for tokens in live if tokens[:depth] == prefix}
            children = trie.children(prefix)
            assert set(children) == expected
            assert [int(t[3:-1]) for t in children] == sorted(int(t[3:-1]) for t in children)
    assert trie.children(live[0]) == []
    assert trie.children(("<a_999999>",)) == []
    arrays = trie.to_arrays()
    root_children = arrays.child_tokens[arrays.offsets[0]:arrays.offsets[1]].tolist()
    assert root_children == trie.children(())
    assert int((arrays.depth == arrays.sid_length).sum()) == len(trie)


def test_vocabulary_covers_every_sid_token(built):
    params, _, table = built
    vocabulary = sid_vocabulary(params.sids)
    sids = params.sids
    assert len(vocabulary) == len(set(vocabulary)) == sids.levels * sids.codebook_size + sids.max_collisions
    used = {token for sid in table["sid"] for token in sid_tokens(sid)}
    assert used <= set(vocabulary)
    assert sid_tokens("<a_12><b_6><c_22><d_0>") == ["<a_12>", "<b_6>", "<c_22>", "<d_0>"]
    for malformed in ("<a_12><c_6>", "<a_1>x", "", "<b_1>"):
        with pytest.raises(ValueError, match="not an S-ID"):
            sid_tokens(malformed)


def test_frozen_codebooks_reproduce_the_codes(built):
    params, _, table = built
    quantizer, meta = load_quantizer(out_dir(params))
    assert meta["method"] == "rq_kmeans" and meta["codebook_shapes"][0][1] == meta["input_dim"]
    ads = ads_of(params).sort_values("ad_id")
    sids = params.sids
    embedded = embed_texts(ad_texts(ads), sids.encoder, sids.batch_size, params.path(sids.embeddings_cache))
    assert embedded.encoded == 0  # the build filled the cache
    codes = quantizer.encode(embedded.vectors)
    expected = table.set_index("ad_id").loc[ads["ad_id"], level_columns(params.sids.levels)[:-1]].to_numpy()
    np.testing.assert_array_equal(codes, expected)


def test_same_seed_same_table(built, tmp_path, validated):
    """A fresh workspace and a fresh cache (so the encoder runs again) give byte-identical S-IDs and codebooks."""
    params, _, table = built
    again = make_workspace(tmp_path, validated, overrides=KMEANS)
    report = run_build_sids(again)
    assert report["encoded_texts"] > 0
    pd.testing.assert_frame_equal(load_sid_table(out_dir(again)), table)
    first, second = (np.load(out_dir(p) / CODEBOOKS_FILE) for p in (params, again))
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])


def test_embedding_cache_encodes_only_new_texts(tmp_path, validated):
    params = make_workspace(tmp_path, validated)
    distinct = len(set(zip(*(ads_of(params)[c] for c in ("title", "description", "industry")))))
    first = run_build_sids(params)
    assert (first["encoded_texts"], first["cached_texts"]) == (distinct, len(ads_of(params)) - distinct)
    second = run_build_sids(params)
    assert (second["encoded_texts"], second["cached_texts"]) == (0, len(ads_of(params)))
    ads = ads_of(params)
    ads.loc[0, "title"] = "Brand-new title nobody has encoded yet"
    write_ads(params, ads)
    assert run_build_sids(params)["encoded_texts"] == 1


def test_bfloat16_encoder_is_close_to_float32_and_cached_apart(built, tmp_path):
    """`sids.encoder_dtype: bfloat16` (issue 14's faster S-IDs): vectors within cosine 0.999 of float32's, under
    their own encoder id, so a float32 run never reads bf16 vectors from the cache (nor the other way round)."""
    params, _, _ = built
    texts = ad_texts(ads_of(params).sort_values("ad_id"))[:120]
    sids, cache = params.sids, tmp_path / "embeddings"
    exact = embed_texts(texts, sids.encoder, sids.batch_size, cache)
    fast = embed_texts(texts, sids.encoder, sids.batch_size, cache, dtype="bfloat16")
    assert fast.encoded == exact.encoded > 0 and fast.encoder_id != exact.encoder_id
    assert fast.vectors.dtype == np.float32
    cosine = (exact.vectors * fast.vectors).sum(axis=1)
    assert cosine.min() >= 0.999
    assert not np.array_equal(exact.vectors, fast.vectors)  # really ran in bf16
    again = embed_texts(texts, sids.encoder, sids.batch_size, cache)
    assert again.encoded == 0 and np.array_equal(again.vectors, exact.vectors)


def test_native_bf16_cpu_reads_the_cpu_flags(tmp_path):
    """bf16 runs ~6x slower than float32 on a CPU without bf16 instructions (an AVX2 EPYC), so asking for it there
    warns: the check reads /proc/cpuinfo's flags, and says "cannot tell" rather than guess without them."""
    from leadre.sids.encoder import native_bf16_cpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert native_bf16_cpu(cpuinfo) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert native_bf16_cpu(cpuinfo) is True
    assert native_bf16_cpu(tmp_path / "missing") is None


def test_cache_lookup_across_shards_with_a_text_cached_twice(tmp_path):
    """Two processes may cache the same text; lookups still return each digest's own vector."""
    keys = text_digests("encoder", ["a", "b", "c"])
    vectors = np.arange(9, dtype=np.float32).reshape(3, 3)
    EmbeddingCache(tmp_path).add(keys[:2], vectors[:2])
    EmbeddingCache(tmp_path).add(keys[1:], vectors[1:])
    found, got = EmbeddingCache(tmp_path).lookup(text_digests("encoder", ["c", "x", "a", "b"]))
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(got, vectors[[2, 0, 1]])


def test_similar_ads_share_prefixes(built):
    """Ads of one sub-industry share their level-0 code far more often than two random ads do."""
    params, _, table = built
    joined = table.merge(ads_of(params)[["ad_id", "industry"]], on="ad_id")

    def pairs(groups) -> int:
        sizes = groups.size().to_numpy()
        return int((sizes * (sizes - 1)).sum())

    same_sub = pairs(joined.groupby(["industry", "level_0"], observed=True)) / pairs(
        joined.groupby("industry", observed=True))
    random_pair = pairs(joined.groupby("level_0")) / (len(joined) * (len(joined) - 1))
    assert same_sub > 5 * random_pair


def test_new_ads_get_sids_from_frozen_codebooks(tmp_path, validated, shared_cache, built):
    # `built` has filled the shared cache: this test is about assignment, not encoding.
    params = make_workspace(tmp_path, validated, shared_cache)
    full = ads_of(params)
    held_back = full.sample(30, random_state=0)["ad_id"]
    write_ads(params, full[~full["ad_id"].isin(held_back)])
    run_build_sids(params)
    before = load_sid_table(out_dir(params))
    codebooks = (out_dir(params) / CODEBOOKS_FILE).read_bytes()

    changed = full.copy()  # the new ads come back, and one old live ad is paused meanwhile
    paused_id = before.loc[before["live"], "ad_id"].iloc[0]
    changed.loc[changed["ad_id"] == paused_id, "status"] = "paused"
    write_ads(params, changed)
    result = run_assign_sids(params)
    after = load_sid_table(out_dir(params))

    assert result["assigned"] == 30
    assert after["sid"].is_unique and sorted(after["ad_id"]) == sorted(full["ad_id"])
    kept = after.set_index("ad_id").loc[before["ad_id"]].reset_index()
    pd.testing.assert_frame_equal(kept.drop(columns="live"), before.drop(columns="live"))
    assert (out_dir(params) / CODEBOOKS_FILE).read_bytes() == codebooks
    trie = live_trie(after)
    active = set(changed.query("status == 'active'")["ad_id"])
    assert set(after.loc[after["live"], "ad_id"]) == active and paused_id not in active
    assert [trie.contains(s) for s in after["sid"]] == after["live"].tolist()
    new_live = after[after["ad_id"].isin(held_back) & after["live"]]
    assert len(new_live) > 0 and all(trie.contains(s) for s in new_live["sid"])
    assert run_assign_sids(params)["assigned"] == 0
    pd.testing.assert_frame_equal(load_sid_table(out_dir(params)), after)


def test_rq_vae_gives_unique_sids_and_reloads(tmp_path, validated, shared_cache):
    params = make_workspace(tmp_path, validated, shared_cache, {"sids.method": "rq_vae", "sids.rqvae": FAST_RQVAE})
    report = run_build_sids(params)
    table = load_sid_table(out_dir(params))
    assert report["method"] == "rq_vae" and table["sid"].is_unique and len(table) == len(ads_of(params))
    assert (out_dir(params) / RQVAE_WEIGHTS_FILE).is_file()
    quantizer, meta = load_quantizer(out_dir(params))
    assert meta["codebook_shapes"] == [[params.sids.codebook_size, FAST_RQVAE["latent_dim"]]] * params.sids.levels
    new_ads = ads_of(params).head(5).assign(ad_id=lambda a: a["ad_id"] + 10_000_000)
    write_ads(params, pd.concat([ads_of(params), new_ads], ignore_index=True))
    assert run_assign_sids(params)["assigned"] == 5
    assert load_sid_table(out_dir(params))["sid"].is_unique


@pytest.mark.parametrize("encoder", ["does/not/exist", "empty_folder"])
def test_missing_encoder_is_a_clear_error(tmp_path, validated, encoder):
    (tmp_path / "empty_folder").mkdir()
    params = make_workspace(tmp_path, validated, overrides={"sids.encoder": encoder})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / encoder))):
        run_build_sids(params)
    assert not out_dir(params).exists()


def test_too_many_collisions_is_a_clear_error_and_keeps_the_last_build(tmp_path, validated, shared_cache):
    params = make_workspace(tmp_path, validated, shared_cache)
    run_build_sids(params)
    previous = folder_bytes(out_dir(params))
    coarse = make_workspace(tmp_path / "coarse", validated, shared_cache,
                            {"sids.levels": 1, "sids.codebook_size": 2, "sids.max_collisions": 4,
                             "sids.out_dir": str(out_dir(params))})
    with pytest.raises(SidCollisionError, match="(?i)raise sids.codebook_size or sids.levels .* sids.max_collisions"):
        run_build_sids(coarse)
    assert folder_bytes(out_dir(params)) == previous
    assert set(previous) >= {SID_TABLE, SID_REPORT_FILE, CODEBOOKS_FILE, QUANTIZER_FILE}


def test_fewer_points_than_codebook_entries():
    points = np.repeat(np.eye(4, dtype=np.float32), [3, 1, 1, 1], axis=0)  # 4 distinct points, one repeated
    quantizer = ResidualKMeans(levels=2, codebook_size=16, iterations=5, seed=0)
    codebooks = quantizer.fit(points)
    assert len(codebooks[0]) == 4  # no duplicate centroids splitting identical points
    codes = quantizer.encode(points)
    assert len(set(codes[:3, 0])) == 1 and len(set(map(tuple, codes))) == 4
    np.testing.assert_allclose(quantizer.decode(codes), points, atol=1e-6)


def test_report_goes_to_an_active_mlflow_run_only(monkeypatch):
    logged = []
    fake = types.SimpleNamespace(active_run=lambda: None, log_metrics=logged.append)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    report = {"ads": 3, "method": "rq_kmeans", "utilisation": {"level_0": 0.5}, "seconds": {"total": 1.5}}
    assert not log_to_mlflow(report) and logged == []
    fake.active_run = lambda: object()
    assert log_to_mlflow(report)
    assert logged == [{"sids.ads": 3.0, "sids.utilisation.level_0": 0.5, "sids.seconds.total": 1.5}]
