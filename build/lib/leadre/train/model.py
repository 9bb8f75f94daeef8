"""The model factory: `builtin:tiny` (built from a config, tokenizer trained on our corpus) or any causal LM folder.

Either way the S-ID tokens become special tokens of the tokenizer (each S-ID level code is one token the model
generates) and the embedding matrix grows to match, new rows initialised from the mean of the existing ones so
they start as "an average token" rather than as noise far from everything the model knows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from leadre.config import ModelParams
from leadre.errors import UserError
from leadre.train.processes import from_main_process

log = logging.getLogger(__name__)

BUILTIN_TINY = "builtin:tiny"
SID_TOKEN = re.compile(r"<[a-z]_\d+>")
# ChatML, as Qwen2.5 uses: a user pointing base_model at a Qwen checkpoint gets the same prompt layout as the tiny one.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<|unk|>",
                       "additional": ["<|im_start|>"]}


class ModelError(UserError, ValueError):
    """base_model is missing, unreadable, or not a causal language model."""


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on our own texts (prompts, ad and content text), wrapped for transformers.

    S-ID tokens are taken out of the training text: they are added afterwards as special tokens, as for any
    hub model, so BPE never spends merges on them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [TINY_SPECIAL_TOKENS["pad_token"], TINY_SPECIAL_TOKENS["eos_token"], TINY_SPECIAL_TOKENS["unk_token"],
               *TINY_SPECIAL_TOKENS["additional"]]
    tokenizer = Tokenizer(models.BPE(unk_token=TINY_SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((SID_TOKEN.sub(" ", text) for text in corpus), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=TINY_SPECIAL_TOKENS["pad_token"],
        eos_token=TINY_SPECIAL_TOKENS["eos_token"], unk_token=TINY_SPECIAL_TOKENS["unk_token"],
        additional_special_tokens=TINY_SPECIAL_TOKENS["additional"], padding_side="left")
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_tiny(model: ModelParams, tokenizer, seed: int):
    """The embedded default: a small Qwen2 built from `model.tiny` around `tokenizer` (S-ID tokens included)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tiny = model.tiny
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden_size, num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads, num_key_value_heads=tiny.kv_heads, intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(config)
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    return lm, tokenizer


def check_causal_lm(path: str) -> Any:
    """The config of a causal-LM folder or cached hub id, or a ModelError that says what is wrong with it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder = Path(path)
    looks_local = path.startswith((".", "/", "~")) or folder.exists()
    if looks_local and not (folder / "config.json").is_file():
        raise ModelError(f"base_model {path!r}: no config.json in that folder (expected a Hugging Face model "
                         f"folder, e.g. one written by save_pretrained, or `{BUILTIN_TINY}`)")
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"base_model {path!r}: not a local model folder and not in the Hugging Face cache "
                         f"(this platform never downloads weights: copy the model folder here and point "
                         f"base_model at it): {err}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"base_model {path!r}: model type {config.model_type!r} has no causal-LM head "
                         f"(architectures {config.architectures}); use a decoder-only model such as Qwen2 or Llama")
    return config


def load_pretrained(path: str, sid_tokens: list[str], dtype: str = "auto"):
    """A Hugging Face causal LM and its tokenizer, with the S-ID tokens added and embeddings resized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_causal_lm(path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:  # many base models ship none; padding needs one and eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if add_sid_tokens(tokenizer, sid_tokens):
        # mean_resizing: new rows drawn around the mean embedding, so new tokens start near the model's own
        # distribution (transformers' recommended initialisation for added tokens)
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return lm, tokenizer


def add_sid_tokens(tokenizer, sid_tokens: list[str]) -> int:
    """Add the S-ID tokens not yet known as special tokens; returns how many were new."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in sid_tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return len(missing)


def load_model(model: ModelParams, corpus: Iterable[str], sid_tokens: list[str], seed: int,
               tokenizer_folder: Path | None = None):
    """The starting point of SFT: `builtin:tiny` or `base_model` as a Hugging Face causal LM.

    `tokenizer_folder` (a checkpoint being resumed) reuses the tiny model's tokenizer instead of training a new
    one, so the resumed weights meet exactly the vocabulary they were trained with.
    """
    if model.base_model != BUILTIN_TINY:
        return load_pretrained(model.base_model, sid_tokens)
    if tokenizer_folder is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), padding_side="left")
    else:
        def trained():
            tokenizer = train_tokenizer(corpus, model.tiny.vocab_size)
            add_sid_tokens(tokenizer, sid_tokens)
            return tokenizer

        # under a launcher every rank must see the same vocabulary: rank 0 trains it and sends it to the others
        tokenizer = from_main_process(trained)
    return build_tiny(model, tokenizer, seed)


def load_trained(folder: Path | str, dtype: str = "auto"):
    """A model and tokenizer written by `leadre sft` or `leadre dpo` (LoRA already merged).

    Weights are read from safetensors only: a pickled `pytorch_model.bin` in the folder (a bundle from a registry
    someone else can write to) is never loaded, since unpickling runs whatever code the file names. A folder whose
    files cannot be read is a ModelError naming the file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no trained model here (run `leadre sft` first)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    except Exception as err:  # a truncated tokenizer.json surfaces as JSON, OSError or tokenizers' own errors
        raise ModelError(f"{folder / 'tokenizer.json'}: unreadable tokenizer ({_one_line(err)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
    except Exception as err:  # safetensors raises its own SafetensorError, transformers OSError/ValueError
        raise ModelError(f"{_unreadable_weights(folder)}: unreadable model weights ({_one_line(err)})") from None
    return model, tokenizer


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _unreadable_weights(folder: Path) -> Path | str:
    """The weights file that fails to open, else the folder (missing weights, a config that does not match them)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except Exception:
            return path
    return folder


def parameter_count(lm) -> int:
    return sum(p.numel() for p in lm.parameters())
