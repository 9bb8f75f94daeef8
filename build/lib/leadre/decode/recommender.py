"""The LLM recommender: a trained model bundle + trie-constrained beam search → top-K live ads per prompt.

Used by offline evaluation, the near-line service and the registered MLflow model alike, so all three rank the same
way. The trie holds the live ads of the bundle's S-ID table only, so every returned ad is a real, eligible ad.
Ranking corrects the model's scores for the shift in ad popularity since training (leadre/decode/prior.py) when
the caller has the engagement log; the registered pyfunc, which has none, ranks by the model alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leadre.bundle import SID_TABLE, SIDS_FOLDER, read_response_counts
from leadre.config import DecodeParams
from leadre.units import PAD


@dataclass
class Generated:
    """Per prompt, the ads the beam search found (best first) and their sequence log-probabilities."""

    ad_ids: list[np.ndarray]
    logprobs: list[np.ndarray]


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class LlmRecommender:
    name = "leadre"

    def __init__(self, bundle: Path | str, settings: DecodeParams, live_ad_ids: np.ndarray | None = None):
        """`live_ad_ids` narrows the trie to ads live now (near-line); by default the bundle's own live flags."""
        import torch

        from leadre.decode.beam import TokenTrie
        from leadre.sids.trie import SidTrie
        from leadre.train.model import load_trained

        bundle = Path(bundle)
        self.settings = settings
        self.device = resolve_device(settings.device)
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model, self.tokenizer = load_trained(bundle, dtype=dtype)
        self.model.to(self.device).eval()
        table = pd.read_parquet(bundle / SIDS_FOLDER / SID_TABLE, columns=["ad_id", "sid", "live"])
        live = table[table["live"]] if live_ad_ids is None else table[table["ad_id"].isin(live_ad_ids)]
        if live.empty:
            raise ValueError(f"{bundle}: no live ad has an S-ID, nothing can be recommended")
        self.ad_ids = live["ad_id"].to_numpy(np.int64)
        self._by_ad_id = np.argsort(self.ad_ids, kind="stable")
        sids = live["sid"].tolist()
        self.response_counts = read_response_counts(bundle)
        self.trie = TokenTrie.build(SidTrie.from_sids(sids).to_arrays(), self.tokenizer.convert_tokens_to_ids,
                                    sids=sids).to(self.device)

    def prompt_ids(self, prompts: list[list[dict]]) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)
                 for p in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def sid_indices(self, ad_ids: np.ndarray) -> np.ndarray:
        """Rows of the live S-ID table for these ad ids; ads that are not live have none and are dropped."""
        ad_ids = np.asarray(ad_ids, dtype=np.int64)
        at = np.searchsorted(self.ad_ids, ad_ids, sorter=self._by_ad_id).clip(max=len(self.ad_ids) - 1)
        rows = self._by_ad_id[at]
        return rows[self.ad_ids[rows] == ad_ids]

    def popularity_shift(self, engagements: pd.DataFrame | None) -> pd.Series | None:
        """Live ad id → the popularity-shift term `top_k` adds to its log-probability (`decode.prior`), given the ad
        engagements (user_id, ad_id, ts) before ranking time; None when the correction is off or impossible."""
        from leadre.decode.prior import popularity_shift

        return popularity_shift(self.ad_ids, self.response_counts, engagements, self.settings.prior)

    def generate(self, prompts: list[list[dict]], beam_width: int | None = None,
                 exclude: list[np.ndarray] | None = None) -> Generated:
        """Each prompt's best `beam_width` live ads; with `exclude` (ad ids per prompt), none of those ads.

        Exclusion happens inside the search, so a list is as long as the beam whenever that many other live ads
        exist, rather than cut short by filtering the beams afterwards.
        """
        from leadre.decode.beam import constrained_beam_search

        width = beam_width or self.settings.beam_width
        excluded = [self.sid_indices(e) for e in exclude] if exclude is not None else None
        found = constrained_beam_search(self.model, self.prompt_ids(prompts), self.trie, beam_width=width,
                                        num_return=width, batch_size=self.settings.batch_size,
                                        pad_token_id=self.tokenizer.pad_token_id, exclude=excluded)
        return Generated(ad_ids=[self.ad_ids[np.array([i for i, _ in row], dtype=np.int64)] for row in found],
                         logprobs=[np.array([s for _, s in row], dtype=np.float64) for row in found])


def top_k(generated: Generated, k: int, exclude: list[np.ndarray] | None, ecpm: pd.Series, industry: pd.Series,
          value_weight: float, diversity_penalty: float, prior: pd.Series | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) ad ids padded with PAD and their final scores, after exclusions and value/diversity re-ranking.

    Final score = log-prob + prior + λ·log(eCPM), then each further ad of an industry already chosen pays the
    diversity penalty: the prior (`LlmRecommender.popularity_shift`) corrects relevance for popularity shift, λ
    trades relevance for revenue, the penalty relevance for variety.
    """
    from leadre.decode.beam import rerank

    n = len(generated.ad_ids)
    ids = np.full((n, k), PAD, dtype=np.int64)
    scores = np.full((n, k), -np.inf)
    for row, (ads, logprobs) in enumerate(zip(generated.ad_ids, generated.logprobs)):
        if exclude is not None and len(exclude[row]):
            keep = ~np.isin(ads, exclude[row])
            ads, logprobs = ads[keep], logprobs[keep]
        if not len(ads):
            continue
        if prior is not None:
            logprobs = logprobs + prior.reindex(ads, fill_value=0.0).to_numpy()
        ranked = rerank(logprobs, ecpm.reindex(ads).to_numpy(), industry.reindex(ads).to_numpy(), value_weight,
                        diversity_penalty)
        chosen = ranked.order[:k]
        ids[row, :len(chosen)] = ads[chosen]
        scores[row, :len(chosen)] = ranked.scores[:len(chosen)]
    return ids, scores
