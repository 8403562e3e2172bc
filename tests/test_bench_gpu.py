"""The GPU check script: without CUDA it refuses in one line with exit code 4; its code runs on the CPU (slow)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_without_cuda_the_check_refuses_with_exit_code_4_and_one_line():
    before = (ROOT / "docs" / "results.md").read_text()
    result = _run()
    assert result.returncode == 4
    assert result.stderr.startswith("bench-gpu: no CUDA device:") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert (ROOT / "docs" / "results.md").read_text() == before  # nothing measured, nothing written


def test_the_make_target_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "bench-gpu: install\n\t$(VENV)/bin/python benchmarks/bench_gpu.py" in makefile


@pytest.mark.slow
def test_the_script_runs_end_to_end_on_the_cpu():
    """Every check and timing on the CPU with tiny settings: the CUDA-only assertions are skipped there, the rest
    of the code (building, fusing, compiling with the eager backend, the tables) runs."""
    result = _run("--cpu-smoke", timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("bf16 autocast: ok", "channels-last: ok", "pinned memory: ok", "torch.compile: ok",
                  "packed fusion: ok", "NCCL: skipped"):
        assert check in result.stdout
    assert "| fp32 | fused (packed) |" in result.stdout and "CPU SMOKE RUN" in result.stdout
