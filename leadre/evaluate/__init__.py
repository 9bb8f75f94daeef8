"""Offline evaluation: ranking metrics and the conventional ID-based baselines the LLM recommender is compared with."""
