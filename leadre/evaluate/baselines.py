"""Conventional ID-based retrieval baselines: what the LLM recommender has to beat.

All three learn from ad engagements (clicks and conversions) strictly before a cut-off and answer under the
standard full-ranking protocol: rank every candidate (the live ads), never return an ad the user already engaged
with, pad with `PAD` when fewer than k candidates remain. Ties and users without evidence fall back to
popularity, so every model returns a full list whenever the candidates allow it.

- `Popularity`: engagement counts, optionally recency-decayed (ads live and die; last month's hit may be gone).
- `ItemKNN`: item-item cosine on user x ad co-engagement; a user's score for an ad sums its similarity to the
  ads in the user's history.
- `SASRec`: self-attentive sequential recommender (Kang & McAuley, 2018), in plain PyTorch.

A baseline is one class here with one params model (pydantic, beside it), registered by name with
`@register_baseline`; `evaluate.baselines` in params.yaml lists which run, each with its settings (checked against
the model when params load). Adding one: its class and params model here, and its entry in params.yaml.

Importing this module is cheap (params validation does, in every process): pandas and scipy load when a
baseline is fitted or asked, torch only when a SASRec is built.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails

from leadre.config import _Section
from leadre.data.contracts import ACTIONS_BY_DOMAIN
from leadre.units import MS_PER_DAY, PAD

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from scipy import sparse

ENGAGEMENT_ACTIONS = ACTIONS_BY_DOMAIN["ad"]
ENGAGEMENT_COLUMNS = ("user_id", "ad_id", "ts")
# Users scored at once: memory is bounded by this many rows x candidates floats, whatever the number of users.
SCORE_BATCH_ROWS = 2048


def ad_engagements(events: pd.DataFrame, before: datetime | pd.Timestamp | None = None) -> pd.DataFrame:
    """`user_id, ad_id, ts` of ad clicks and conversions strictly before `before`, in (user, time) order."""
    import pandas as pd

    mask = (events["domain"] == "ad").to_numpy() & events["action"].isin(ENGAGEMENT_ACTIONS).to_numpy()
    if before is not None:
        mask &= (events["ts"] < pd.Timestamp(before)).to_numpy()
    frame = events.loc[mask, ["user_id", "object_id", "ts"]].rename(columns={"object_id": "ad_id"})
    return frame.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)


def engaged_ads(engagements: pd.DataFrame, user_ids: np.ndarray) -> list[np.ndarray]:
    """The distinct ads each user engaged with: the exclusion lists of the full-ranking protocol."""
    grouped = engagements.groupby("user_id", sort=False)["ad_id"].unique()
    empty = np.empty(0, dtype=np.int64)
    return [np.asarray(grouped.get(u, empty), dtype=np.int64) for u in np.asarray(user_ids).tolist()]


@runtime_checkable
class Recommender(Protocol):
    name: str

    def fit(self, engagements: pd.DataFrame) -> Self:
        """Learn from `ad_engagements(...)` rows (columns user_id, ad_id, ts)."""
        ...

    def recommend(self, user_ids: np.ndarray, k: int, candidates: np.ndarray,
                  exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """(len(user_ids), k) ad ids from `candidates`, best first, never in the row's `exclude`, padded with PAD."""
        ...


def _check_engagements(engagements: pd.DataFrame) -> None:
    missing = [c for c in ENGAGEMENT_COLUMNS if c not in engagements.columns]
    if missing:
        raise ValueError(f"engagements lack columns {missing}; build them with ad_engagements(events, before)")
    if engagements.empty:
        raise ValueError("no engagements to fit on")


def _ms(ts: pd.Series) -> np.ndarray:
    import pandas as pd

    return pd.to_datetime(ts, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)


def popularity_scores(engagements: pd.DataFrame, half_life_days: float | None) -> pd.Series:
    """Engagements per ad; with a half-life, each one weighs 2^(-age / half_life), age measured from the last
    engagement in the data (the cut-off, up to the quietest hours)."""
    import pandas as pd

    if half_life_days is None:
        weight = np.ones(len(engagements))
    else:
        ms = _ms(engagements["ts"])
        weight = np.exp2(-(ms.max() - ms) / (half_life_days * MS_PER_DAY))
    return pd.Series(weight, index=engagements["ad_id"].to_numpy()).groupby(level=0).sum()


def _rank(primary: np.ndarray, fallback: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the top k per row: by primary score, then fallback, then candidate order; -1 where fewer
    than k columns are eligible. -inf in `primary` means "no opinion", not "forbidden"."""
    order_in_list = np.broadcast_to(np.arange(primary.shape[1]), primary.shape)
    keys = (order_in_list, np.broadcast_to(-fallback, primary.shape), -primary, ~eligible)
    order = np.lexsort(keys, axis=-1)[:, :k]
    return np.where(np.take_along_axis(eligible, order, axis=1), order, -1)


class BaselineParams(_Section):
    """A baseline's settings: `evaluate.baselines.<name>` in params.yaml (unknown keys are errors)."""


class ScoringRecommender(ABC):
    """Shared answering logic: subclasses score candidates; ranking, exclusions and padding live here once."""

    name: str
    Params: ClassVar[type[BaselineParams]]
    params: BaselineParams

    def __init__(self, params: BaselineParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.popularity: pd.Series | None = None
        self.fit_seconds: float | None = None

    def fit(self, engagements: pd.DataFrame) -> Self:
        _check_engagements(engagements)
        start = time.perf_counter()
        self.popularity = popularity_scores(engagements, self._fallback_half_life())
        self._fit(engagements)
        self.fit_seconds = time.perf_counter() - start
        return self

    def _fallback_half_life(self) -> float | None:
        return self.params.fallback_half_life_days

    @abstractmethod
    def _fit(self, engagements: pd.DataFrame) -> None: ...

    @abstractmethod
    def _score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(len(user_ids), len(candidates)) scores, higher is better; -inf where the model has no opinion."""

    def _list_shares(self, scores: np.ndarray, fallback: np.ndarray, listed: np.ndarray) -> np.ndarray:
        """Each row's listed ads as a distribution (`fusion.method: mixture`), from the scores and popularity
        fallback of the ads a row lists (`listed`: False on padding). Scores here are evidence (higher = more, 0 =
        none): their shares; a row without evidence is ranked by popularity, so shares of popularity; a row with
        neither, uniform. A model whose scores are logits overrides this with a softmax."""
        evidence = np.where(listed & np.isfinite(scores), np.maximum(scores, 0.0), 0.0)
        popular = np.where(listed, np.maximum(fallback, 0.0), 0.0)
        weights = listed.astype(np.float64)
        for better in (popular, evidence):  # the last with any mass in a row wins
            weights = np.where(better.sum(axis=1, keepdims=True) > 0, better, weights)
        return weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)

    def recommend(self, user_ids: np.ndarray, k: int, candidates: np.ndarray,
                  exclude: Sequence[np.ndarray] | None = None, return_shares: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """As `Recommender.recommend`; with `return_shares`, also each listed ad's share of the row
        (`_list_shares`, 0 on padding): the list as a distribution, what the mixture fusion reads."""
        import pandas as pd

        if self.popularity is None:
            raise RuntimeError(f"{self.name}: call fit() before recommend()")
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if exclude is not None and len(exclude) != len(user_ids):
            raise ValueError(f"exclude has {len(exclude)} rows for {len(user_ids)} users")
        candidates = pd.unique(np.asarray(candidates, dtype=np.int64))
        candidates = candidates[candidates != PAD]
        fallback = self.popularity.reindex(candidates, fill_value=0.0).to_numpy()
        out = np.full((len(user_ids), k), PAD, dtype=np.int64)
        shares = np.zeros((len(user_ids), k))
        for start in range(0, len(user_ids), SCORE_BATCH_ROWS):
            rows = slice(start, start + SCORE_BATCH_ROWS)
            batch = user_ids[rows]
            eligible = np.ones((len(batch), len(candidates)), dtype=bool)
            if exclude is not None:
                _mask_excluded(eligible, exclude[rows], candidates)
            scores = self._score(batch, candidates)
            picked = _rank(scores, fallback, eligible, k)
            column = np.maximum(picked, 0)
            out[rows, :picked.shape[1]] = np.where(picked >= 0, candidates[column], PAD)
            if return_shares:
                shares[rows, :picked.shape[1]] = self._list_shares(
                    np.take_along_axis(scores, column, axis=1), fallback[column], picked >= 0)
        return (out, shares) if return_shares else out


def _mask_excluded(eligible: np.ndarray, exclude: Sequence[np.ndarray], candidates: np.ndarray) -> None:
    import pandas as pd

    lists = [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
    rows = np.repeat(np.arange(len(lists)), [len(e) for e in lists])
    if not len(rows):
        return
    columns = pd.Index(candidates).get_indexer(np.concatenate(lists))
    eligible[rows[columns >= 0], columns[columns >= 0]] = False


# --- the registry -----------------------------------------------------------------------------------------------

BASELINES: dict[str, type[ScoringRecommender]] = {}


def register_baseline(cls: type[ScoringRecommender]) -> type[ScoringRecommender]:
    """Class decorator: the baseline becomes available as `evaluate.baselines.<cls.name>` in params.yaml."""
    BASELINES[cls.name] = cls
    return cls


def baseline_class(name: str) -> type[ScoringRecommender]:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; baselines are {', '.join(BASELINES)}")
    return BASELINES[name]


def baseline_settings(settings: dict[str, Any]) -> dict[str, BaselineParams]:
    """`evaluate.baselines` (name → its settings) checked against each baseline's params model.

    A bad setting is a ValidationError located at the baseline's name (`sasrec.epochs`), so params loading names
    `evaluate.baselines.sasrec.epochs`.
    """
    checked: dict[str, BaselineParams] = {}
    errors: list[InitErrorDetails] = []
    for name, values in settings.items():
        model = baseline_class(name).Params
        try:
            checked[name] = values if isinstance(values, model) else model.model_validate(values or {})
        except ValidationError as err:
            errors += [InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                       for e in err.errors()]
    if errors:
        raise ValidationError.from_exception_data("baselines", errors)
    return checked


def make_baseline(name: str, params: BaselineParams) -> ScoringRecommender:
    return baseline_class(name)(params)


# --- Popularity -------------------------------------------------------------------------------------------------

class PopularityParams(BaselineParams):
    # None: plain counts. 7 beat 3, 14 and none on the default world's valid week
    half_life_days: float | None = Field(7.0, gt=0)


@register_baseline
class Popularity(ScoringRecommender):
    """The same list for everyone (minus what each user already engaged with)."""

    name = "popularity"
    Params = PopularityParams

    def __init__(self, params: PopularityParams | None = None) -> None:
        super().__init__()
        self.params = params or PopularityParams()

    def _fallback_half_life(self) -> float | None:
        return self.params.half_life_days

    def _fit(self, engagements: pd.DataFrame) -> None:
        pass  # the base class already counted engagements

    def _score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        scores = self.popularity.reindex(candidates, fill_value=0.0).to_numpy()
        return np.broadcast_to(scores, (len(user_ids), len(candidates)))


# --- ItemKNN ----------------------------------------------------------------------------------------------------

class ItemKNNParams(BaselineParams):
    # similar ads kept per ad (None: all); pruning drops noisy one-off co-engagements
    neighbours: int | None = Field(100, ge=1)
    shrink: float = Field(20.0, ge=0)  # added to the cosine denominator: damps similarities resting on few shared users
    fallback_half_life_days: float | None = Field(7.0, gt=0)  # popularity used for ties and users without history


@register_baseline
class ItemKNN(ScoringRecommender):
    """Item-based collaborative filtering on binary user x ad co-engagement (Sarwar et al., 2001)."""

    name = "itemknn"
    Params = ItemKNNParams

    def __init__(self, params: ItemKNNParams | None = None) -> None:
        super().__init__()
        self.params = params or ItemKNNParams()

    def _fit(self, engagements: pd.DataFrame) -> None:
        import pandas as pd
        from scipy import sparse

        pairs = engagements[["user_id", "ad_id"]].drop_duplicates()
        self.users = pd.Index(pd.unique(pairs["user_id"]))
        self.items = pd.Index(np.sort(pd.unique(pairs["ad_id"])))
        rows, cols = self.users.get_indexer(pairs["user_id"]), self.items.get_indexer(pairs["ad_id"])
        self.history = sparse.csr_matrix((np.ones(len(pairs)), (rows, cols)),
                                         shape=(len(self.users), len(self.items)))
        co = (self.history.T @ self.history).tocsr()  # co[i, j]: users who engaged with both ads
        norm = np.sqrt(co.diagonal())
        co.setdiag(0)
        co.eliminate_zeros()
        coo = co.tocoo()
        sim = coo.data / (norm[coo.row] * norm[coo.col] + self.params.shrink)
        self.similarity = _keep_top_per_row(sparse.csr_matrix((sim, (coo.row, coo.col)), shape=co.shape),
                                            self.params.neighbours)

    def _score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        scores = np.zeros((len(user_ids), len(candidates)))
        user_rows = self.users.get_indexer(user_ids)
        known_user = user_rows >= 0
        columns = self.items.get_indexer(candidates)
        known_item = columns >= 0
        if known_user.any() and known_item.any():
            item_scores = (self.history[user_rows[known_user]] @ self.similarity[:, columns[known_item]]).toarray()
            scores[np.ix_(known_user, known_item)] = item_scores
        return scores  # 0 = no evidence: the popularity fallback orders those


def _keep_top_per_row(matrix: sparse.csr_matrix, n: int | None) -> sparse.csr_matrix:
    if n is None:
        return matrix
    matrix = matrix.tocsr()
    keep = np.zeros(matrix.nnz, dtype=bool)
    for row in range(matrix.shape[0]):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        if hi - lo <= n:
            keep[lo:hi] = True
        else:
            # stable on -similarity so equal similarities keep the lower ad index: deterministic
            keep[lo + np.argsort(-matrix.data[lo:hi], kind="stable")[:n]] = True
    pruned = matrix.copy()
    pruned.data = np.where(keep, pruned.data, 0.0)
    pruned.eliminate_zeros()
    return pruned


# --- SASRec -----------------------------------------------------------------------------------------------------

class SASRecParams(BaselineParams):
    hidden: int = Field(64, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    max_len: int = Field(50, ge=2)  # most recent engagements a user's sequence keeps
    # 7 × 64 at 6e-3 matched 25 epochs × 256 at 3e-3 on the default world in ~1/4 of the time: more, smaller steps
    # get the model past its early popularity plateau sooner (bench/baselines.py)
    epochs: int = Field(7, ge=1)
    lr: float = Field(6e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    # high, as in the paper for sparse data: most users have a handful of engagements
    dropout: float = Field(0.5, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0
    device: str = "cpu"
    # CPU threads while fitting and scoring; 0 = the step's own (model.cpu_threads). On 2 idle cores 2 threads fit
    # the default world in 12-14 s against 16-22 s on one, with the same lists; but on a core another process holds,
    # tiny ops handed to 2 threads ran ~5x slower than on 1 (bench/baselines.py)
    threads: int = Field(0, ge=0)
    fallback_half_life_days: float | None = Field(7.0, gt=0)  # popularity for users unseen at fit time


@register_baseline
class SASRec(ScoringRecommender):
    """Next-ad prediction from the ordered sequence of a user's engagements.

    Loss: full softmax cross-entropy over all ads at every position (not the paper's BCE against one sampled
    negative). With a catalogue of thousands of ads the full softmax is cheap, and it converges in far fewer
    epochs and ranks better (Klenitskiy & Vasilev, RecSys 2023). Output scores are the dot product of the last
    position's state with the (tied) ad embeddings.

    Consecutive repeats of one ad are collapsed: a conversion follows the click on the same ad, and learning to
    echo the last ad teaches nothing the exclusion lists would not remove anyway.
    """

    name = "sasrec"
    Params = SASRecParams

    def __init__(self, params: SASRecParams | None = None) -> None:
        super().__init__()
        self.params = params or SASRecParams()
        self.network = None
        self.loss_history: list[float] = []

    def _fit(self, engagements: pd.DataFrame) -> None:
        import pandas as pd
        import torch

        p = self.params
        users = engagements["user_id"].to_numpy()
        ads = engagements["ad_id"].to_numpy()
        # (user, time) order is the contract of ad_engagements; re-sorting here keeps hand-built frames honest.
        order = np.lexsort((_ms(engagements["ts"]), users))
        users, ads = users[order], ads[order]
        repeat = np.r_[False, (users[1:] == users[:-1]) & (ads[1:] == ads[:-1])]
        users, ads = users[~repeat], ads[~repeat]

        self.items = pd.Index(np.sort(pd.unique(ads)))  # ad -> embedding row - 1 (row 0 is padding)
        codes = self.items.get_indexer(ads) + 1
        self.users, starts = np.unique(users, return_index=True)
        self.sequences = np.split(codes, starts[1:])  # kept for inference: the history a user is scored on
        self.user_index = pd.Index(self.users)

        # Seeded locally: the caller's (CPU) torch RNG stream stays untouched.
        with torch.random.fork_rng(devices=[]), _torch_threads(p.threads):
            torch.manual_seed(p.seed)
            self.network = _build_network(len(self.items), p).to(p.device)
            self.loss_history = _train(self.network, self.sequences, p)
        self.network.eval()

    def _list_shares(self, scores: np.ndarray, fallback: np.ndarray, listed: np.ndarray) -> np.ndarray:
        """Logits: a softmax over the listed ads; a row the model knows nothing of (all -inf) takes the base class's
        popularity shares."""
        from leadre.decode.fusion import softmax_shares

        softmax = softmax_shares(np.where(listed, scores, -np.inf), 1.0, scores.shape[1])
        return np.where(softmax.sum(axis=1, keepdims=True) > 0, softmax,
                        super()._list_shares(scores, fallback, listed))

    def _score(self, user_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        import torch

        scores = np.full((len(user_ids), len(candidates)), -np.inf)
        user_rows = self.user_index.get_indexer(user_ids)
        known_user = np.flatnonzero(user_rows >= 0)
        columns = self.items.get_indexer(candidates) + 1
        known_item = np.flatnonzero(columns > 0)
        if not len(known_user) or not len(known_item):
            return scores
        seqs = [self.sequences[r][-self.params.max_len:] for r in user_rows[known_user]]
        batch, lengths = _right_padded(seqs, self.params.max_len, self.params.device)
        with torch.no_grad(), _torch_threads(self.params.threads):
            states = self.network(batch)
            last = states[torch.arange(len(seqs), device=batch.device), lengths - 1]
            logits = last @ self.network.items.weight[torch.as_tensor(columns[known_item], device=batch.device)].T
        scores[np.ix_(known_user, known_item)] = logits.double().cpu().numpy()
        return scores


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's thread count is process-wide: set it for one call and put the caller's back (0: leave it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _right_padded(seqs: Sequence[np.ndarray], max_len: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences left-aligned and padded with 0 on the right, cut to the batch's longest.

    Right padding makes the causal mask enough: a real position only ever attends to earlier real positions, so a
    user's state does not depend on how much padding its batch carried.
    """
    import torch

    lengths = np.array([min(len(s), max_len) for s in seqs])
    batch = np.zeros((len(seqs), int(lengths.max())), dtype=np.int64)
    for i, s in enumerate(seqs):
        batch[i, :lengths[i]] = s[-max_len:]
    return torch.as_tensor(batch, device=device), torch.as_tensor(lengths, device=device)


def _build_network(n_items: int, p: SASRecParams) -> torch.nn.Module:
    import torch
    from torch import nn

    class SASRecNetwork(nn.Module):
        """Ad embedding + learned positions, causal pre-norm transformer blocks, final layer norm."""

        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, p.hidden, padding_idx=0)
            self.positions = nn.Embedding(p.max_len, p.hidden)
            self.dropout = nn.Dropout(p.dropout)
            block = nn.TransformerEncoderLayer(p.hidden, p.heads, dim_feedforward=p.hidden, dropout=p.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, p.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(p.hidden)
            nn.init.normal_(self.items.weight, std=p.hidden ** -0.5)

        def forward(self, seq: torch.Tensor) -> torch.Tensor:
            length = seq.shape[1]
            positions = torch.arange(length, device=seq.device)
            x = self.items(seq) * p.hidden ** 0.5 + self.positions(positions)
            x = self.dropout(x) * (seq != 0).unsqueeze(-1)
            causal = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)
            return self.norm(self.blocks(x, mask=causal, is_causal=True))

    return SASRecNetwork()


def _train(network: torch.nn.Module, sequences: list[np.ndarray], p: SASRecParams) -> list[float]:
    """Mean loss per epoch. Each user contributes their last max_len + 1 ads: inputs [:-1], targets [1:]."""
    import torch
    import torch.nn.functional as F

    trainable = [s[-(p.max_len + 1):] for s in sequences if len(s) >= 2]
    if not trainable:
        return []
    optimiser = torch.optim.Adam(network.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    shuffle = np.random.default_rng(p.seed)
    lengths = np.array([len(s) for s in trainable])
    network.train()
    losses = []
    for _ in range(p.epochs):
        total, count = 0.0, 0
        for index in _length_buckets(lengths, p.batch_size, shuffle):
            seqs = [trainable[i] for i in index]
            inputs, _ = _right_padded([s[:-1] for s in seqs], p.max_len, p.device)
            targets, _ = _right_padded([s[1:] for s in seqs], p.max_len, p.device)
            real = targets != 0
            states = network(inputs)[real]
            logits = states @ network.items.weight[1:].T  # every ad is a negative for every position
            loss = F.cross_entropy(logits, targets[real] - 1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            n = int(real.sum())
            total, count = total + loss.item() * n, count + n
        losses.append(total / count)
    return losses


def _length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length, in random order: a batch is as long as its longest sequence, and most users
    have a handful of engagements next to a few with dozens, so mixing them would mostly compute padding."""
    shuffled = rng.permutation(len(lengths))
    by_length = shuffled[np.argsort(lengths[shuffled], kind="stable")]  # equal lengths stay in random order
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
