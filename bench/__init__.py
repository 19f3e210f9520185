"""Benchmarks: each module with a `main()` measures one cost and writes `bench/results/<name>.json`.

Run them with `python -m bench [names...]` (or `make bench`). They report figures and whether each
target is met; they never fail on a slow machine. Speed is not asserted by the test suite.
"""
