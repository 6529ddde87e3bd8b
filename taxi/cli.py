"""What the command-line entry points share (pure: no luigi)."""

from __future__ import annotations

import os
import sys


def print_output(text: str) -> None:
    """Print a command's output; a reader that closed the pipe (`| head`) has what it wanted: no traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail too
