from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_benchmark_runs_end_to_end_and_prints_its_result_line(tmp_path):
    """The benchmark script at toy scale on the CPU: it must not rot between GPU runs."""
    out = subprocess.run(
        [sys.executable, "bench/throughput.py", "test_resnet", "--batch-size", "8",
         "--img-size", "32", "--data", str(tmp_path / "data"), "--people", "6", "--steps", "3",
         "--epochs", "2", "--workers", "0", "--device", "cpu",
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT model=test_resnet pure=\d+ ours=\d+ seeds_loop=\d+ "
                        r"ours/pure=\d+\.\d\d ours/seeds=\d+\.\d\d", last), last
