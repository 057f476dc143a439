"""Fixtures shared by the test modules."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def run_pipetask():
    """Run ``pipetask run`` with one of the package's pipelines on a butler repo.

    Returns a function ``run(repo, inputs, output, pipeline, instrument="SimCam",
    extra=())`` (``pipeline`` is a file name in ``pipelines/``, ``extra`` more
    pipetask arguments, e.g. ``-c`` overrides) that fails the test with the end of
    pipetask's output when it does not succeed, and returns the completed
    process.
    """

    def run(
        repo, inputs: str, output: str, pipeline: str, instrument: str = "SimCam", extra=()
    ) -> subprocess.CompletedProcess:
        pipetask = Path(sys.executable).parent / "pipetask"
        cmd = [
            str(pipetask) if pipetask.exists() else "pipetask",
            "run",
            "-b",
            str(repo),
            "-i",
            inputs,
            "-o",
            output,
            "-p",
            str(ROOT / "pipelines" / pipeline),
            "-d",
            f"instrument='{instrument}'",
            "--register-dataset-types",
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc

    return run
