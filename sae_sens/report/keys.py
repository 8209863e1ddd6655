"""Report constants the CLI needs to build its help, importable without duckdb, numpy or pyarrow."""

GROUP_KEYS = ("run", "sae", "generator", "model", "width", "architecture", "sparsity", "layer")
N_RESAMPLES = 1000
