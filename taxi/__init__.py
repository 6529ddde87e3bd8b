"""NYC taxi trip duration: a Luigi pipeline from TLC monthly records to a registered XGBoost model."""

import os

# XGBoost's OpenMP threads spin while they wait by default; on a busy machine a spinning thread takes the core the
# other needs (docs/performance.md has the measurement). Set before anything loads libgomp; an operator's own
# OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
