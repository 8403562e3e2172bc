"""Start-up: ``import peerlearn`` and the CLI's help import no torch; a config read through ``peerlearn.config``
alone still knows the shipped recipes' sections (the recipes are a declared section provider)."""

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_and_help_do_not_import_torch_or_pydantic():
    code = ("import sys\n"
            "import peerlearn\n"
            "from peerlearn.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['evaluate', '--help'], ['sql', '--help'], ['--version']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit as stop:\n"
            "        assert stop.code == 0, (argv, stop.code)\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'peerlearn.api', 'peerlearn.recipes') if m in sys.modules))")
    assert _python(code).splitlines()[-1] == "[]"


def test_public_names_are_imported_on_first_use():
    code = ("import sys, peerlearn\n"
            "assert 'train' in dir(peerlearn) and 'torch' not in sys.modules\n"
            "from peerlearn import train, LayerTaps, RunConfig\n"
            "print(train.__module__, LayerTaps.__module__, RunConfig.__name__, 'torch' in sys.modules)")
    assert _python(code) == "peerlearn.api peerlearn.models.taps RunConfig True"
    missing = subprocess.run([sys.executable, "-c", "import peerlearn; peerlearn.no_such_name"], capture_output=True,
                             text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert missing.returncode == 1 and "no attribute 'no_such_name'" in missing.stderr


def test_a_config_read_through_the_config_layer_alone_holds_recipe_sections():
    code = ("from peerlearn.config import load_config\n"
            "config = load_config({'recipe': 'mutual', 'mutual': {'temperature': 3.0}})\n"
            "print(config.mutual.temperature, hasattr(config, 'distill'))")
    assert _python(code) == "3.0 False"  # the chosen recipe's section only
