"""The end every benchmark shares: print the load and the exact command, and write the rows as JSON."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def finish(rows: Any, json_path: Path | None, *, load: bool = False) -> str:
    """Print the command that produced the table (and the load average); write `rows` to `json_path`."""
    if load:
        print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"\ncommand: `{command}`")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"rows": rows, "command": command}, indent=1) + "\n")
    return command
