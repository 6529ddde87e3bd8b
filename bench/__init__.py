"""Measurement, kept out of the product: the benchmarks, synthetic months and the course's baseline. Not installed:
run its modules from the checkout's root (`python -m bench.speed`), as the scripts do."""
