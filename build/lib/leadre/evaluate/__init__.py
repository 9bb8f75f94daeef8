"""Offline evaluation: ranking metrics and the conventional ID-based baselines the LLM recommender is compared with."""

# The model a retrain proposes, as the evaluation and the gate name it (beside baselines, SFT and the champion).
CANDIDATE = "candidate"
