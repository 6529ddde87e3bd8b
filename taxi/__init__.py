"""NYC taxi trip duration: a Luigi pipeline from TLC monthly records to a registered XGBoost model."""

import os

# XGBoost's OpenMP threads spin while they wait by default; on a busy 2-core machine a spinning thread takes the
# core the other needs (a lossguide trial took 37.5 s spinning, 8.1 s passive, on 2 threads under load 4). Set
# before anything loads libgomp; an operator's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
