"""Schemathesis against the live server: the API does what its OpenAPI document says.

Its command line is used (its pytest plugin does not load under pytest 9); a non-zero exit
means a response broke the document (status, content type, schema) or the server failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.api.conftest import TOKEN

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_the_api_matches_its_openapi_document(api_base: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{api_base}/api/v1/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "20261122",
            "-H",
            f"Authorization: Bearer {TOKEN}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
