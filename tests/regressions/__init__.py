"""Inputs the fuzzer found to crash bnfuse, one module per finding (see ``README.md``)."""
