"""Docs generated from code must match the code."""

from pathlib import Path

from peerlearn.config_doc import render_config_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_config_reference_is_up_to_date():
    current = (DOCS / "config.md").read_text()
    assert current == render_config_reference(), (
        "docs/config.md is stale: run `python -m peerlearn.config_doc > docs/config.md`")
