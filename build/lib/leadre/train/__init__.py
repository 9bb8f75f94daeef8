"""Prompts → SFT model → DPO model: the model factory, the TRL trainers and their MLflow tracking."""
