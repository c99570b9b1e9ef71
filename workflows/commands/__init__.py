"""Commands: run, sweep, ablate, check, compare, init; each composes pipeline + engine + tracking, none imports another."""
