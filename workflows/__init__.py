"""foldwise's workflow layers, lowest first: engine (Ray) -> tracking (MLflow) -> pipeline (spec,
inputs, the node graph) -> commands -> cli. Each imports only layers below it (import-linter
contracts in pyproject.toml); `errors` and `units` sit at the base."""
