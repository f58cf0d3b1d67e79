"""Golden files: each tests/web/golden/NAME.caddyfile beside NAME.json, the configuration it
must produce (every site's addresses, settings and each directive's parsed config, plus the
errors and warnings), as JSON.

Regenerate after a deliberate change (then read the diff!):

    UPDATE_GOLDEN=1 pytest tests/web/test_golden.py

Files are loaded with the golden folder as the working directory; its absolute path shows as
"<dir>" in the JSON. The environment holds only GOLDEN_HOST=golden.test and GOLDEN_PORT=8080.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from meshkit.web.caddyfile.load import load_file, site_to_dict

GOLDEN = Path(__file__).resolve().parent / "golden"
ENVIRON = {"GOLDEN_HOST": "golden.test", "GOLDEN_PORT": "8080"}
CASES = sorted(p.name for p in GOLDEN.glob("*.caddyfile"))


def _scrub(value: Any, real: str) -> Any:
    if isinstance(value, str):
        return value.replace(real, "<dir>")
    if isinstance(value, list):
        return [_scrub(v, real) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, real) for k, v in value.items()}
    return value


def produce(name: str) -> dict[str, Any]:
    config = load_file(name, environ=ENVIRON)
    out = {
        "sites": [site_to_dict(s) for s in config.sites],
        "errors": [str(e) for e in config.errors],
        "warnings": list(config.warnings),
    }
    scrubbed = _scrub(out, str(GOLDEN))
    assert isinstance(scrubbed, dict)
    return scrubbed


def test_there_are_golden_files() -> None:
    assert CASES, f"no *.caddyfile in {GOLDEN}"


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)
    got = produce(name)
    expected_path = GOLDEN / (name.removesuffix(".caddyfile") + ".json")
    text = json.dumps(got, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(text)
        return
    if not expected_path.exists():
        pytest.fail(
            f"{expected_path.name} is missing: write it with "
            "UPDATE_GOLDEN=1 pytest tests/web/test_golden.py, then check it"
        )
    expected = json.loads(expected_path.read_text())
    assert got == expected, f"{name} no longer produces {expected_path.name}"


def test_no_json_without_caddyfile() -> None:
    orphans = [
        p.name
        for p in GOLDEN.glob("*.json")
        if not (GOLDEN / (p.name.removesuffix(".json") + ".caddyfile")).exists()
    ]
    assert orphans == []
