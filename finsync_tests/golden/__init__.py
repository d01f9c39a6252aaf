"""Golden files: expected outputs of derive and reconcile on fixture inputs.

Regenerate after an intended change with ``FINSYNC_UPDATE_GOLDEN=1 .venv/bin/pytest
finsync_tests/logic``, then review the diff like any other change.
"""

import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

GOLDEN_DIR = Path(__file__).resolve().parent


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        # Exact text: a golden file must show 10.00, not 10.0 or 10.
        return {"decimal": str(value)}
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and value != value:
        return None
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def frame_to_plain(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of ``df`` as JSON-ready dicts (NA to null, Decimal to its exact text)."""
    return [_plain(r) for r in df.astype(object).to_dict("records")]


def assert_golden(name: str, actual: Any) -> None:
    """Compare ``actual`` with ``golden/<name>.json``; rewrite it when FINSYNC_UPDATE_GOLDEN=1."""
    path = GOLDEN_DIR / f"{name}.json"
    plain = _plain(actual)
    if os.environ.get("FINSYNC_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
        return
    assert path.is_file(), f"no golden file {path}; run with FINSYNC_UPDATE_GOLDEN=1 to create it"
    expected = json.loads(path.read_text())
    assert plain == expected, f"output differs from {path.name}"
