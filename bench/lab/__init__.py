"""One-off lab tools behind `make bench`: step profiles, per-layer timings, quality screens and the
GPU session scripts; bench/lab/README.md says what each is and how to run it."""
