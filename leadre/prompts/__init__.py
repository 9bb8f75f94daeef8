"""Validated data + semantic IDs → intent-aware <prompt, response> pairs, alignment tasks and DPO pairs."""
