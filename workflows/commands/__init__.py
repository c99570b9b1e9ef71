"""Commands: run, sweep, ablate, check, compare; each composes pipeline + engine + tracking, none imports another."""
