"""The test kit: tiny real components (models, SAEs, corpora), a real OpenAI-compatible server, the
two-pass collection baseline and table helpers, shared by the tests and the benchmarks. Not part of
the library: nothing in ``sae_sens`` imports it (tests/test_layers.py checks)."""
