"""Generation: trie-constrained beam search over S-ID tokens, and re-ranking of the ads it returns.

Importing this package is cheap; `leadre.decode.beam` loads torch.
"""
