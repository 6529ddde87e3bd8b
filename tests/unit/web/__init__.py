"""Pure parts of taxi/web/, one test module per module."""
