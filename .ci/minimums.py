"""Print ``name==minimum`` for the given packages, from the ``>=`` bounds pyproject.toml declares.

CI installs these to test each integration on the oldest version it claims to support.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
pins = []
for name in sys.argv[1:]:
    found = re.search(rf'"{re.escape(name)}>=([0-9][0-9.]*)"', text)
    if found is None:
        sys.exit(f"pyproject.toml declares no minimum for {name}")
    pins.append(f"{name}=={found.group(1)}")
print(" ".join(pins))
