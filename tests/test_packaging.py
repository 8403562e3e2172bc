"""Installation prints no warning of the project's own making (checked by hand with
`python3 -m venv /tmp/v && /tmp/v/bin/pip install -v --no-deps -e . 2>&1 | grep -i warn`: nothing from setuptools)."""

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a TOML table here is deprecated (SetuptoolsDeprecationWarning)
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first setuptools that reads SPDX strings


TORCH_CONSTRAINT = """python -c "import torch; print(f'torch=={torch.__version__}')" > torch-constraint.txt"""


def test_the_timm_extra_is_installed_with_a_constraint_that_keeps_the_installed_torch(tmp_path):
    """timm needs torchvision, which pins one torch: docs/own-models.md installs the extra with a constraint on
    the installed torch; the documented line writes exactly that pin."""
    import subprocess
    import sys

    import torch

    doc = (REPO / "docs" / "own-models.md").read_text()
    assert TORCH_CONSTRAINT in doc and "pip install 'peerlearn[timm]' -c torch-constraint.txt" in doc
    command = TORCH_CONSTRAINT.split(" > ")[0].removeprefix("python ")
    done = subprocess.run([sys.executable, *_split(command)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"torch=={torch.__version__}"


def _split(command: str) -> list[str]:
    import shlex

    return shlex.split(command)


@pytest.mark.slow  # asks the package index; a minute
def test_pip_plans_no_other_torch_for_the_timm_extra_under_the_constraint(tmp_path):
    import subprocess
    import sys

    import torch

    constraint = tmp_path / "torch-constraint.txt"
    constraint.write_text(f"torch=={torch.__version__}\n")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "timm>=0.9", "-c", str(constraint)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = next(line for line in done.stdout.splitlines() if line.startswith("Would install"))
    assert " torch-" not in plan and "timm-" in plan


def test_the_tensorboard_extra_installs_the_viewer():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert any(req.startswith("tensorboard>=") for req in extras["tensorboard"])
    assert "pip install 'peerlearn[tensorboard]'" in (REPO / "docs" / "tracking.md").read_text()


@pytest.mark.slow  # asks the package index
def test_pip_resolves_the_tensorboard_extra_without_another_torch(tmp_path):
    import subprocess
    import sys

    import torch

    (tmp_path / "c.txt").write_text(f"torch=={torch.__version__}\n")
    requirement = next(r for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["tensorboard"])
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", requirement, "-c",
                           str(tmp_path / "c.txt")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tensorboard" in done.stdout
