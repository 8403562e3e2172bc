"""Installation prints no warning of the project's own making (checked by hand with
`python3 -m venv /tmp/v && /tmp/v/bin/pip install -v --no-deps -e . 2>&1 | grep -i warn`: nothing from setuptools)."""

import pytest

from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a TOML table here is deprecated (SetuptoolsDeprecationWarning)
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first setuptools that reads SPDX strings
