"""roomcast's benchmarks: bench/run.py drives them (layout: bench/README.md).

docs/benchmarks.md has the figures, each with the command that made it.
"""
