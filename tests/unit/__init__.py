"""The fast tier: pure functions of taxi/, one test module per module (no services, no Luigi runs, no MLflow)."""
