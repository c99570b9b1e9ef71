"""The pipeline: spec, inputs checked at the edge, the node graph that run, sweep and ablate compose, outputs."""
