"""Semantic IDs: each ad's text → a short, unique sequence of codebook tokens (`<a_12><b_6><c_22><d_0>`).

The LLM generates these tokens; a trie of live ads' S-IDs constrains decoding to real ads. Importing this package is
cheap (numpy/pandas only): torch and transformers load inside the functions that embed or train.
"""

from leadre.sids.build import (
    SidCollisionError,
    load_sid_table,
    run_assign_sids,
    run_build_sids,
    sid_vocabulary,
)
from leadre.sids.trie import SidTrie, format_sid, sid_tokens

__all__ = ["SidCollisionError", "SidTrie", "format_sid", "load_sid_table", "run_assign_sids", "run_build_sids",
           "sid_tokens", "sid_vocabulary"]
