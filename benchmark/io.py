"""Small file helpers shared by every stage."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, data) -> None:
    """Write through a temp file and rename, so a killed stage never leaves half a JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
