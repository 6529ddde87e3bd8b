"""What the tests run against, without fixtures (those are in tests/conftest.py): real servers on 127.0.0.1, the
cluster harness that bench/cluster.py shares, and helpers that run the pipeline as an operator does."""
