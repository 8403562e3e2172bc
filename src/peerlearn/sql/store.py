"""The model store: a folder in which model ``NAME`` is the ordinary run directory ``STORE/NAME``.

Every command that takes a run directory (``peerlearn evaluate``, ``export``, ``report``, ``analyze``)
works on ``STORE/NAME``. Besides the run's own files the directory holds ``statement.sql`` (the statement
that trained it) and ``sql.json`` (its query, label and feature columns). New runs are trained in a hidden
``STORE/.training`` folder and moved into place when they have finished, so a failed or interrupted
``TO TRAIN`` leaves no half-trained model under the name.

The store is ``--models DIR`` on the command line, else ``$PEERLEARN_MODELS``, else ``./models``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from peerlearn.errors import ConfigError, ResourceError
from peerlearn.run_files import CONFIG_NAME, WEIGHTS_NAME

STATEMENT_FILE = "statement.sql"
INFO_FILE = "sql.json"
STAGING = ".training"


def default_store() -> Path:
    return Path(os.environ.get("PEERLEARN_MODELS") or "models")


class ModelStore:
    def __init__(self, root: Union[str, Path, None] = None):
        self.root = Path(root) if root is not None else default_store()

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / CONFIG_NAME).is_file()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / CONFIG_NAME).is_file())

    def require(self, name: str) -> Path:
        """The run directory of model ``name``; an error listing the store's models when there is none."""
        if not self.exists(name):
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"There is no model {name!r} in the model store {str(self.root)!r} (its models: "
                              f"{known}). Train it with SELECT ... TO TRAIN ... INTO {name}, or choose the store "
                              "with --models DIR.")
        if not (self.path(name) / WEIGHTS_NAME).is_file():
            raise ConfigError(f"The model {name!r} in {str(self.root)!r} has no model.safetensors: its training "
                              "did not finish.")
        return self.path(name)

    def check_free(self, name: str, overwrite: bool) -> None:
        if self.path(name).exists() and not overwrite:
            raise ConfigError(f"The model store {str(self.root)!r} already holds a model {name!r}; choose another "
                              "name after INTO, or replace it with --overwrite.")

    def staging(self) -> Path:
        """Where new runs are trained before they are moved to their name."""
        folder = self.root / STAGING
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ResourceError(f"Cannot create the model store {str(self.root)!r}: {error.strerror or error}. "
                                "Choose another one with --models DIR.") from None
        return folder

    def publish(self, run_dir: Path, name: str, overwrite: bool) -> Path:
        """Move a finished run directory to ``STORE/NAME`` (replacing an older model only when asked)."""
        target = self.path(name)
        old = None
        if target.exists():
            self.check_free(name, overwrite)
            old = self.root / STAGING / f"{name}.replaced"
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
        try:
            run_dir.rename(target)
        except OSError as error:  # another statement published the name meanwhile
            raise ResourceError(f"Cannot move the finished run {str(run_dir)!r} to {str(target)!r}: "
                                f"{error.strerror or error}. The run is complete where it is.") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def save_statement(self, name: str, statement: str, info: dict[str, Any]) -> None:
        folder = self.path(name)
        (folder / STATEMENT_FILE).write_text(statement.strip() + "\n")
        (folder / INFO_FILE).write_text(json.dumps(info, indent=2))

    def statement(self, name: str) -> Optional[str]:
        file = self.path(name) / STATEMENT_FILE
        return file.read_text().strip() if file.is_file() else None

    def info(self, name: str) -> dict[str, Any]:
        file = self.path(name) / INFO_FILE
        return json.loads(file.read_text()) if file.is_file() else {}
