"""The registered model as an MLflow pyfunc: `mlflow.pyfunc.load_model("models:/leadre-recommender@champion")`.

The artifact is the whole bundle (weights, tokenizer, S-ID table, codebooks: leadre/bundle.py); our package travels with it
(`code_paths`), so a serving host needs only the pinned libraries. `predict` takes a DataFrame with a `prompt`
column (a chat message list, or a plain user message) and returns each row's top ads with their scores.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd

BUNDLE_ARTIFACT = "bundle"


def signature():
    """prompt (chat messages) → ad_ids, scores; `k` as an inference parameter (default 10)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(inputs=Schema([ColSpec(Array(message), "prompt")]),
                          outputs=Schema([ColSpec(Array("long"), "ad_ids"), ColSpec(Array("double"), "scores")]),
                          params=ParamSchema([ParamSpec("k", "long", 10)]))


class LeadreModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from leadre.config import DecodeParams
        from leadre.decode.recommender import LlmRecommender

        self.settings = DecodeParams(**context.model_config)
        self.recommender = LlmRecommender(context.artifacts[BUNDLE_ARTIFACT], self.settings)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if "prompt" not in model_input.columns:
            raise ValueError(f"expected a `prompt` column, got {list(model_input.columns)}")
        k = int((params or {}).get("k", 10))
        prompts = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}]
                   for p in model_input["prompt"].tolist()]
        generated = self.recommender.generate([[dict(m) for m in p] for p in prompts])
        return pd.DataFrame({"ad_ids": [ids[:k].tolist() for ids in generated.ad_ids],
                             "scores": [s[:k].tolist() for s in generated.logprobs]})
