"""Every code block of README.md and docs/*.md that is meant to run does.

* ```python blocks run exactly as written, in an empty folder, a page's blocks in order in one interpreter (a
  later block may use an earlier one's names; they must be fast);
* shell blocks (no language, bash, sh, console) run each line that starts with ``peerlearn`` through the CLI,
  with these substitutions: ``CONFIG`` becomes a tiny digits config, ``RUN_DIR`` (and any ``runs/...`` path that
  does not exist) the run directory of the block's last ``peerlearn train`` (else a tiny finished run), every
  ``peerlearn train`` gets ``TINY_OVERRIDES`` (digits, one epoch) appended, ``demo`` gets ``--epochs 1``;
  any other line in a shell block (pip, make, ...) needs the block to be marked no-run;
* ```yaml blocks that hold a mapping must validate as a run config (``peerlearn.config.load_config``).

Running every documented command takes minutes, so that test is marked ``slow`` (``make test-slow``); the
default suite checks that each command is accepted by the argument parser and that its config and overrides
validate.

A block that is not meant to run (output, a placeholder, a command needing files the tests do not have) is
marked with the HTML comment ``<!-- no-run -->`` on the line before its opening fence. A new page under docs/
joins automatically.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, tiny_config

NO_RUN = "<!-- no-run -->"
SHELL = {"", "bash", "sh", "shell", "console"}
TINY_OVERRIDES = ["data.source=digits", "data.image_size=null", "data.train_subset=null", "data.val_size=null",
                  "data.val_fraction=0.2", "data.batch_size=64", "train.epochs=1", "train.progress=off",
                  "train.threads=1", "tracking.tensorboard=false"]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    runs: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, with their language and whether they are meant to run."""
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].startswith("```"))
        marked = index > 0 and lines[index - 1].strip() == NO_RUN
        blocks.append(Block(page, index + 1, opening.group(1).lower(), "\n".join(lines[index + 1:end]) + "\n",
                            not marked))
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def _blocks(*languages: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.runs and b.language in languages]


def test_the_readme_config_is_the_shipped_config():
    readme = next(b for b in code_blocks(REPO / "README.md") if b.language == "yaml")
    shipped = (REPO / "configs" / "fmnist_dml_pair.yaml").read_text()
    assert readme.text == shipped, "README.md's config block must be configs/fmnist_dml_pair.yaml, verbatim"


def test_the_block_parser_sees_markers_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nprint(1)\n```\n<!-- no-run -->\n```\npip install x\n```\n")
    first, second = code_blocks(page)
    assert (first.language, first.text, first.runs) == ("python", "print(1)\n", True)
    assert (second.language, second.runs) == ("", False)


# Pages whose Python blocks a dedicated test runs as printed (with assertions on what they show).
OWN_TESTS = {"docs/own-loop.md": "tests/test_docs_own_loop.py", "docs/lightning.md": "tests/test_lightning.py"}


def _python_pages() -> list:
    pages = {}
    for block in BLOCKS:
        if block.runs and block.language == "python":
            pages.setdefault(str(block.page.relative_to(REPO)), []).append(block)
    return [pytest.param(blocks, id=page) for page, blocks in pages.items() if page not in OWN_TESTS]


def test_pages_with_their_own_test_have_it():
    for page, test in OWN_TESTS.items():
        assert page in (str(b.page.relative_to(REPO)) for b in BLOCKS) and (REPO / test).is_file(), (page, test)


@pytest.mark.parametrize("blocks", _python_pages())
def test_python_blocks_run_as_written(blocks, tmp_path):
    """A page's Python blocks run in order in one interpreter, as a reader would paste them one after the
    other (a later block may use what an earlier one defined)."""
    script = "".join(f"# --- {block.id} ---\n{block.text}" for block in blocks)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    numbered = "\n".join(f"{n:4d}  {line}" for n, line in enumerate(script.splitlines(), 1))
    assert done.returncode == 0, f"{blocks[0].page.name} failed:\n{numbered}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("block", _blocks("yaml", "yml"))
def test_yaml_block_is_a_valid_config(block):
    from peerlearn.config import load_config

    tree = yaml.safe_load(block.text)
    if isinstance(tree, dict):
        load_config(tree)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    import peerlearn

    out = tmp_path_factory.mktemp("doc-runs")
    return peerlearn.train(tiny_config(recipe="mutual", train={"epochs": 1, "progress": "off", "threads": 1}),
                           out=out).run_dir


def _command_lines(block: Block) -> list[str]:
    commands = []
    for line in block.text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if not line or line.startswith("#"):
            continue
        assert line.startswith("peerlearn "), (
            f"{block.id}: the shell line {line!r} is not a peerlearn command; mark the block with {NO_RUN}")
        commands.append(line)
    return commands


def _substitute(words: list[str], run_dir: Path, config: Path) -> list[str]:
    result = []
    for word in words:
        if word == "CONFIG":
            word = str(config)
        elif word == "RUN_DIR" or (word.startswith("runs/") and not (REPO / word).exists()):
            word = str(run_dir)
        elif "/" in word and (REPO / word).exists():
            word = str(REPO / word)
        result.append(word)
    return result


@pytest.mark.parametrize("block", _blocks(*SHELL))
def test_shell_block_commands_parse_and_configs_validate(block, tmp_path):
    """Fast check of every documented command: the CLI accepts its arguments, and a train or config command's
    CONFIG with its overrides is a valid config (running them all is the slow test below)."""
    from peerlearn.cli import COMMANDS_WITH_OVERRIDES, build_parser, split_config_and_overrides
    from peerlearn.config import load_config
    from peerlearn.models import create_model

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(recipe="mutual")))
    for line in _command_lines(block):
        words = _substitute(shlex.split(line)[1:], tmp_path, config)
        try:
            args, extra = build_parser().parse_known_args(words)
        except SystemExit:
            pytest.fail(f"{block.id}: `{line}` is refused by the argument parser")
        assert not [w for w in extra if w.startswith("-")], f"{block.id}: `{line}` has unknown options {extra}"
        if args.command in COMMANDS_WITH_OVERRIDES:
            split_config_and_overrides(args, extra)
            if args.config is not None or args.overrides:
                from peerlearn.sweeps import grid_override

                grid = [found for item in args.overrides if (found := grid_override(item)) is not None]
                fixed = [item for item in args.overrides if grid_override(item) is None]
                variants = [[f"{key}={value}"] for key, values in grid for value in values] or [[]]
                for variant in variants:  # a sweep's grid (key=v1,v2): each value with the fixed overrides
                    run_config = load_config(args.config, fixed + variant)
                    for member in run_config.members:  # a model option the model lacks fails here, not in training
                        create_model(member.model, num_classes=10, in_channels=1,
                                     image_size=run_config.data.image_size or 28, **member.model_args)


@pytest.mark.slow
@pytest.mark.parametrize("block", _blocks(*SHELL))
def test_shell_block_commands_run(block, tmp_path, finished_run):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(recipe="mutual")))
    run_dir = finished_run
    for line in _command_lines(block):
        words = _substitute(shlex.split(line)[1:], run_dir, config)
        if words[:1] == ["train"] and "--resume" not in words:
            words += [*TINY_OVERRIDES, "--out", str(tmp_path / "runs")]
        if words[:1] == ["demo"]:
            words += ["--epochs", "1", "--out", str(tmp_path / "runs")]
        done = run_cli(*words, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, f"{block.id}: `{line}` exited {done.returncode}:\n{done.stderr[-3000:]}"
        if words[:1] == ["train"] and "--resume" not in words:
            run_dir = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
