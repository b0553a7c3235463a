"""``bench/cpu_share.py`` at toy scale: four real launches, four RESULT lines."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_cpu_share_prints_before_and_after(tmp_path):
    out = subprocess.run(
        [sys.executable, "bench/cpu_share.py", "--out", str(tmp_path), "--trials", "2",
         "--epochs", "1", "--model", "test_resnet"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    assert len(lines) == 4, out.stdout
    for line, settings, workers in zip(lines, ["before", "before", "after", "after"],
                                       [1, 2, 1, 2]):
        tail = r" ratio=\d+\.\d\d" if workers == 2 else ""
        assert re.fullmatch(rf"RESULT settings={settings} workers={workers} "
                            rf"trials_per_hour=\d+\.\d{tail}", line), line
