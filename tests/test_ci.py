"""The CI script: PostgreSQL tests must run there, so a server that will not start stops it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_ci(tmp_path: Path, *, ctl_status: int) -> subprocess.CompletedProcess[str]:
    """Run .ci/run with a PostgreSQL that never answers and stand-ins for the tools it calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        "pg_isready": "exit 2",  # "no response"
        "pg_ctlcluster": f"exit {ctl_status}",
        "sleep": "exit 0",  # the wait loop runs its 60 rounds at once
        "python3": 'echo "python3 $*" >>"$CALLS"; exit 0',
    }
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    env.pop("BATCHSYNC_TEST_POSTGRES_URL", None)
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert not calls.exists(), "the tests ran although PostgreSQL was down"
    return done


@pytest.mark.parametrize("ctl_status", [1, 0], ids=["start-fails", "never-ready"])
def test_ci_stops_when_postgres_cannot_be_started(tmp_path: Path, ctl_status: int) -> None:
    """.ci/run exits non-zero before running any test when PostgreSQL does not come up."""
    done = run_ci(tmp_path, ctl_status=ctl_status)
    assert done.returncode != 0
    assert "PostgreSQL" in done.stderr
