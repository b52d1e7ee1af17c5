"""The parts of `make bench` (scripts/bench.py runs them): what each scenario measures
lives in a module named after it."""
