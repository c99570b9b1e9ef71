"""Tracking: the only code that imports MLflow (runs, batched writes, run readers, fold runs)."""
