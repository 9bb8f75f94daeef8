"""Validated data + semantic IDs → intent-aware <prompt, response> pairs, alignment tasks and DPO pairs."""

# The `task` column of the SFT datasets: the recommendation pairs that evaluation, near-line previews and the loss
# baseline read are "main"; the other values are the auxiliary alignment tasks (prompts.aux_ratio's keys and
# "titles_prompt"), which only training reads.
MAIN_TASK = "main"
SPLITS = ("train", "valid", "test")  # the time split of the main task (leadre/prompts/pairs.py says how)
