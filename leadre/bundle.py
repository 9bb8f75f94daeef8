"""The model bundle: the one folder a trained model travels in, from training through evaluation, the registry and
near-line generation. This module owns its layout (file names, writer and readers) and that of the S-ID folder whose
files a bundle carries:

    <bundle>/                       sft.out_dir, dpo.out_dir, a registered model's `bundle` artifact
      config.json, *.safetensors    the weights (transformers' save_pretrained)
      tokenizer files               the tokenizer, S-ID tokens included
      leadre_model.json             step, base model, final metrics (META_FILE): only what the inputs determine,
                                    no run id or wall time, since DVC hashes the folder
      response_counts.parquet       ad_id, responses: how often each ad was the answer of a main-task training
                                    pair (RESPONSE_COUNTS_FILE; SFT writes it, DPO carries it): the p_train of
                                    the popularity-shift correction (leadre/decode/prior.py)
      sids/                         the S-ID files at training time (SID_FILES, copied from sids.out_dir):
        ad_sids.parquet             ad → S-ID, with live flags: what generation may recommend
        codebooks.npz               the frozen codebooks ...
        quantizer.json              ... and what they were fitted with

    sids.out_dir/                   `leadre sids build` / `sids assign`: the SID_FILES, report.json and the quantiser's
                                    own weights (RQ-VAE)

Not to be confused with the serving bundle (leadre/serve/bundle.py): the champion's version and the live ads the
online service filters with.

Light on purpose: pandas only inside the reader that needs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leadre.io import atomic_dir, write_json

if TYPE_CHECKING:
    import pandas as pd

META_FILE = "leadre_model.json"
RESPONSE_COUNTS_FILE = "response_counts.parquet"
SIDS_FOLDER = "sids"
SID_TABLE = "ad_sids.parquet"
CODEBOOKS_FILE = "codebooks.npz"
QUANTIZER_FILE = "quantizer.json"
SID_REPORT_FILE = "report.json"
# What a model needs besides weights and tokenizer: the S-ID table (which ads it may name) and the codebooks (new
# ads get S-IDs from the same ones), so a registered model is self-contained.
SID_FILES = (SID_TABLE, CODEBOOKS_FILE, QUANTIZER_FILE)


def bundle_sids(bundle: Path | str) -> Path:
    """The bundle's S-ID folder: read like sids.out_dir (`read_sid_table(bundle_sids(bundle))`)."""
    return Path(bundle) / SIDS_FOLDER


def write_bundle(target: Path, model: Any, tokenizer: Any, sids_dir: Path, meta: dict[str, Any],
                 response_counts: pd.Series | None = None) -> None:
    """Write the model folder atomically: weights, tokenizer, the S-ID files, a small JSON of provenance and, when
    given, the main-task response counts (ad id → count)."""
    with atomic_dir(target) as tmp:
        if response_counts is not None:
            response_counts.rename_axis("ad_id").rename("responses").reset_index().to_parquet(
                tmp / RESPONSE_COUNTS_FILE, index=False)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        bundle_sids(tmp).mkdir()
        for name in SID_FILES:
            if (sids_dir / name).exists():
                shutil.copy2(sids_dir / name, bundle_sids(tmp) / name)
        write_json(tmp / META_FILE, meta)


def read_sid_table(folder: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """The ad → S-ID table (ad_id, sid, live, level_0 … level_L) of sids.out_dir or a bundle's `sids/` folder."""
    import pandas as pd

    path = Path(folder) / SID_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `leadre sids build` first")
    return pd.read_parquet(path, columns=columns)


def read_response_counts(bundle: Path | str) -> pd.Series | None:
    """ad id → main-task training responses; None for a folder written without them (an older or foreign model)."""
    import pandas as pd

    path = Path(bundle) / RESPONSE_COUNTS_FILE
    if not path.is_file():
        return None
    frame = pd.read_parquet(path, columns=["ad_id", "responses"])
    return pd.Series(frame["responses"].to_numpy(), index=frame["ad_id"].to_numpy(), name="responses")
