"""The engine: the only code that imports Ray (executors, node runner with cache and progress, Tune trial execution)."""
