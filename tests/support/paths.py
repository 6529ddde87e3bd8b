"""Where things are: the checkout, its venv's executables and the real TLC months beside the checkout."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TLC_DIR = ROOT.parent / "shared" / "data" / "tlc"
BIN = Path(sys.executable).parent
