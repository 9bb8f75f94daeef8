"""Residual quantisation: embedding → `levels` codes, each a row of that level's codebook.

Two methods share one interface (`fit`, `encode`, `decode`, `save`, `load_quantizer`):
- `ResidualKMeans`: k-means on what is left after the previous levels (numpy; k-means++ init; seeded). Cheap, no
  training loop, and what most production systems start from.
- `RqVae`: a small MLP autoencoder whose latent is residual-quantised (TIGER-style, straight-through estimator with
  a commitment loss). It learns a latent space in which codes spread better, at the cost of training.

Both are frozen after `fit`: `save` writes the codebooks (+ the RQ-VAE's weights) so that new ads get codes from the
same codebooks without retraining, which keeps every existing S-ID valid for the trained LLM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leadre.bundle import CODEBOOKS_FILE, QUANTIZER_FILE
from leadre.config import SidsParams
from leadre.io import read_json, write_json

log = logging.getLogger(__name__)

RQVAE_WEIGHTS_FILE = "rqvae.pt"
# Rows per distance computation: bounds memory at (chunk × codebook_size) floats whatever the number of ads.
ROWS_PER_CHUNK = 32_768
# Relative to the mean squared norm: float32 dot products cannot resolve distances smaller than this.
SAME_POINT_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------------------------
# k-means (numpy)


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid per row and the squared distance to it, in memory-bounded chunks."""
    labels = np.empty(len(x), dtype=np.int64)
    distances = np.empty(len(x), dtype=np.float64)
    c_norms = (centroids.astype(np.float64) ** 2).sum(1)
    for start in range(0, len(x), ROWS_PER_CHUNK):
        chunk = x[start:start + ROWS_PER_CHUNK]
        d = c_norms[None, :] - 2.0 * (chunk @ centroids.T).astype(np.float64)
        best = d.argmin(1)
        labels[start:start + len(chunk)] = best
        x_norms = (chunk.astype(np.float64) ** 2).sum(1)
        distances[start:start + len(chunk)] = np.maximum(d[np.arange(len(chunk)), best] + x_norms, 0.0)
    return labels, distances


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding. Stops early when every point already sits on a centre: fewer distinct points than `k`
    yield fewer centroids instead of duplicates that would split identical ads across codes arbitrarily."""
    x_norms = (x.astype(np.float64) ** 2).sum(1)
    # Squared distances via norms carry float32 rounding noise; below this the points count as already covered.
    covered = SAME_POINT_TOLERANCE * max(float(x_norms.mean()), np.finfo(np.float32).tiny)

    def squared_distance(centre: np.ndarray) -> np.ndarray:
        d = x_norms - 2.0 * (x @ centre).astype(np.float64) + float(centre.astype(np.float64) @ centre)
        return np.where(d > covered, d, 0.0)

    first = int(rng.integers(len(x)))
    centres = [first]
    closest = squared_distance(x[first])
    while len(centres) < k:
        total = closest.sum()
        if total <= 0.0:
            break
        pick = int(rng.choice(len(x), p=closest / total))
        centres.append(pick)
        closest = np.minimum(closest, squared_distance(x[pick]))
    return x[centres].astype(np.float32)


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of rows, as one-hot matrix products (BLAS-fast, unlike np.add.at)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for start in range(0, len(x), ROWS_PER_CHUNK):
        chunk_labels = labels[start:start + ROWS_PER_CHUNK]
        one_hot = np.zeros((len(chunk_labels), k), dtype=x.dtype)
        one_hot[np.arange(len(chunk_labels)), chunk_labels] = 1.0
        sums += one_hot.T @ x[start:start + ROWS_PER_CHUNK]
    return sums


def kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means with k-means++ init; an emptied cluster is re-seeded with the worst-served point."""
    centroids = kmeans_plus_plus(x, k, rng)
    labels = None
    for _ in range(iterations):
        new_labels, distances = nearest(x, centroids)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=len(centroids))
        sums = cluster_sums(x, labels, len(centroids))
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        for empty, far in zip(np.flatnonzero(~filled), np.argsort(-distances)):
            centroids[empty] = x[far]
    return centroids


# ---------------------------------------------------------------------------------------------------------------
# The two quantisers


@dataclass
class ResidualKMeans:
    """Residual k-means: level l clusters the residual left by levels 0..l-1."""

    levels: int
    codebook_size: int
    iterations: int
    seed: int
    codebooks: list[np.ndarray] = field(default_factory=list)
    method: str = "rq_kmeans"

    def fit(self, embeddings: np.ndarray) -> list[np.ndarray]:
        residual = np.ascontiguousarray(embeddings, dtype=np.float32).copy()
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(self.levels)]
        self.codebooks = []
        for level in range(self.levels):
            codebook = kmeans(residual, self.codebook_size, self.iterations, rngs[level])
            labels, _ = nearest(residual, codebook)
            residual -= codebook[labels]
            self.codebooks.append(codebook)
        return self.codebooks

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        residual = np.asarray(embeddings, dtype=np.float32).copy()
        codes = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, codebook in enumerate(self.codebooks):
            codes[:, level], _ = nearest(residual, codebook)
            residual -= codebook[codes[:, level]]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return sum(codebook[codes[:, level]] for level, codebook in enumerate(self.codebooks))

    def extra_meta(self) -> dict[str, Any]:
        return {"kmeans_iterations": self.iterations}

    def save_weights(self, folder: Path) -> str | None:
        return None

    def load_weights(self, folder: Path, meta: dict) -> None:
        pass


@dataclass
class RqVae:
    """MLP encoder → residual vector quantiser (`levels` codebooks) → MLP decoder, trained on the embeddings."""

    levels: int
    codebook_size: int
    latent_dim: int
    hidden_dim: int
    epochs: int
    learning_rate: float
    commitment: float
    batch_size: int
    seed: int
    kmeans_iterations: int
    input_dim: int = 0
    codebooks: list[np.ndarray] = field(default_factory=list)
    method: str = "rq_vae"
    _net: Any = field(default=None, repr=False)

    def _build_net(self, input_dim: int):
        from torch import nn

        self.input_dim = input_dim
        net = nn.ModuleDict({
            "encoder": nn.Sequential(nn.Linear(input_dim, self.hidden_dim), nn.ReLU(),
                                     nn.Linear(self.hidden_dim, self.latent_dim)),
            "decoder": nn.Sequential(nn.Linear(self.latent_dim, self.hidden_dim), nn.ReLU(),
                                     nn.Linear(self.hidden_dim, input_dim)),
        })
        self._net = net
        return net

    def _latents(self, embeddings: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._net["encoder"](torch.from_numpy(np.asarray(embeddings, dtype=np.float32))).numpy()

    def fit(self, embeddings: np.ndarray) -> list[np.ndarray]:
        import torch

        from leadre.runtime import progress

        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, caller's RNG state untouched
            torch.manual_seed(self.seed)
            net = self._build_net(x.shape[1])
        # Codebooks start from residual k-means on the untrained latents (as TIGER does): random codebooks leave most
        # entries dead from the first step.
        start = ResidualKMeans(self.levels, self.codebook_size, self.kmeans_iterations, self.seed)
        books = [torch.nn.Parameter(torch.from_numpy(c)) for c in start.fit(self._latents(embeddings))]
        optimiser = torch.optim.Adam([*net.parameters(), *books], lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        with progress(self.epochs, "train rq-vae", "epoch", enabled=self.epochs >= 2) as bar:
            for _ in range(self.epochs):
                for rows in torch.randperm(len(x), generator=generator).split(self.batch_size):
                    loss = self._loss(x[rows], books)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                self._revive_dead_codes(x, books, generator)
                bar.update(1)
        self.codebooks = [b.detach().numpy().copy() for b in books]
        return self.codebooks

    def _loss(self, batch, books):
        """Reconstruction + codebook + commitment terms, each a squared norm per example (TIGER's formulation):
        a per-element mean would shrink the reconstruction term of unit-norm embeddings to noise."""
        import torch

        def squared(a, b):
            return ((a - b) ** 2).sum(1).mean()

        latent = self._net["encoder"](batch)
        residual, quantised, vq_loss = latent, torch.zeros_like(latent), latent.new_zeros(())
        for book in books:
            chosen = book[torch.cdist(residual.detach(), book.detach()).argmin(1)]
            vq_loss = (vq_loss + squared(chosen, residual.detach())
                       + self.commitment * squared(residual, chosen.detach()))
            quantised = quantised + chosen
            residual = residual - chosen.detach()
        straight_through = latent + (quantised - latent).detach()
        return squared(self._net["decoder"](straight_through), batch) + vq_loss

    def _revive_dead_codes(self, x, books, generator) -> None:
        """Move codebook entries no embedding chose onto random residuals of that level, so capacity is not wasted
        (unused entries would otherwise never receive a gradient)."""
        import torch

        with torch.no_grad():
            residual = self._net["encoder"](x)
            for book in books:
                chosen = torch.cdist(residual, book).argmin(1)
                dead = torch.ones(len(book), dtype=torch.bool)
                dead[chosen] = False
                if dead.any():
                    picks = torch.randint(len(x), (int(dead.sum()),), generator=generator)
                    book[dead] = residual[picks]
                residual = residual - book[torch.cdist(residual, book).argmin(1)]

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        residual = self._latents(embeddings)
        codes = np.empty((len(residual), self.levels), dtype=np.int64)
        for level, codebook in enumerate(self.codebooks):
            codes[:, level], _ = nearest(residual, codebook)
            residual = residual - codebook[codes[:, level]]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        latent = sum(codebook[codes[:, level]] for level, codebook in enumerate(self.codebooks))
        with torch.inference_mode():
            return self._net["decoder"](torch.from_numpy(np.asarray(latent, dtype=np.float32))).numpy()

    def extra_meta(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim, "hidden_dim": self.hidden_dim, "epochs": self.epochs,
                "learning_rate": self.learning_rate, "commitment": self.commitment, "batch_size": self.batch_size,
                "kmeans_iterations": self.kmeans_iterations}

    def save_weights(self, folder: Path) -> str:
        import torch

        torch.save(self._net.state_dict(), folder / RQVAE_WEIGHTS_FILE)
        return RQVAE_WEIGHTS_FILE

    def load_weights(self, folder: Path, meta: dict) -> None:
        import torch

        net = self._build_net(meta["input_dim"])
        net.load_state_dict(torch.load(folder / meta["weights"], weights_only=True))
        net.eval()


Quantizer = ResidualKMeans | RqVae


def make_quantizer(sids: SidsParams) -> Quantizer:
    """An unfitted quantiser as params ask."""
    if sids.method == "rq_kmeans":
        return ResidualKMeans(sids.levels, sids.codebook_size, sids.kmeans_iterations, sids.seed)
    vae = sids.rqvae
    return RqVae(sids.levels, sids.codebook_size, vae.latent_dim, vae.hidden_dim, vae.epochs, vae.learning_rate,
                 vae.commitment, vae.batch_size, sids.seed, sids.kmeans_iterations)


def save_quantizer(quantizer: Quantizer, folder: Path, input_dim: int, extra: dict[str, Any] | None = None) -> dict:
    """Write codebooks.npz + quantizer.json (+ weights) into `folder` (the caller makes the folder atomic)."""
    with open(folder / CODEBOOKS_FILE, "wb") as handle:  # a handle: np.savez would append .npz to a bare path
        np.savez(handle, **{f"level_{i}": c for i, c in enumerate(quantizer.codebooks)})
    meta = {
        "method": quantizer.method,
        "levels": quantizer.levels,
        "codebook_size": quantizer.codebook_size,
        "input_dim": input_dim,
        "codebook_shapes": [list(c.shape) for c in quantizer.codebooks],
        "seed": quantizer.seed,
        "weights": quantizer.save_weights(folder),
        **quantizer.extra_meta(),
        **(extra or {}),
    }
    write_json(folder / QUANTIZER_FILE, meta)
    return meta


def load_quantizer(folder: Path) -> tuple[Quantizer, dict]:
    """The frozen quantiser saved in `folder`, with its metadata; nothing is retrained."""
    if not (folder / QUANTIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder / QUANTIZER_FILE} not found: run `leadre sids build` first")
    meta = read_json(folder / QUANTIZER_FILE)
    with np.load(folder / CODEBOOKS_FILE) as books:
        codebooks = [books[f"level_{i}"] for i in range(meta["levels"])]
    if meta["method"] == "rq_kmeans":
        quantizer: Quantizer = ResidualKMeans(meta["levels"], meta["codebook_size"], meta["kmeans_iterations"],
                                              meta["seed"])
    elif meta["method"] == "rq_vae":
        quantizer = RqVae(meta["levels"], meta["codebook_size"], meta["latent_dim"], meta["hidden_dim"],
                          meta["epochs"], meta["learning_rate"], meta["commitment"], meta["batch_size"], meta["seed"],
                          meta["kmeans_iterations"])
    else:
        raise ValueError(f"{folder / QUANTIZER_FILE}: unknown method {meta['method']!r}")
    quantizer.codebooks = codebooks
    quantizer.load_weights(folder, meta)
    return quantizer, meta
