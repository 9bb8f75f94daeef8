"""LEADRE Platform."""
