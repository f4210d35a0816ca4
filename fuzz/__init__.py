"""Fuzzing harness of bnfuse: seed models, mutators and the per-input oracle.

``fuzz/run.py`` is the long run; ``tests/test_fuzz.py`` runs a bounded,
deterministic slice of the same generator in the normal test suite.
"""
