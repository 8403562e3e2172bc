"""A demo database from data scikit-learn ships (no download), so that docs/sql.md runs offline.

Tables (``id`` is the row number, from 1; measurement names with spaces and '/' become '_'):

* ``wine``: 178 wines, 13 chemical measurements, ``cultivar`` (barolo, grignolino, barbera);
* ``breast_cancer``: 569 tumours, 30 measurements, ``diagnosis`` (malignant, benign);
* ``iris``: 150 flowers, 4 measurements, ``species`` (setosa, versicolor, virginica).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Union

from peerlearn.data.sql_read import INSTALL_HINT, sqlite_path, url_scheme
from peerlearn.errors import ConfigError, ResourceError
from peerlearn.sql.writer import write_table

# the wine data's classes are the three cultivars of the Italian study it comes from
WINE_CULTIVARS = ["barolo", "grignolino", "barbera"]


def _column(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name.strip()).strip("_").lower()


def demo_tables() -> dict[str, tuple[list[tuple[str, str]], list[tuple]]]:
    """{table: (columns as (name, kind), rows)} of the demo database."""
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    tables = {}
    for table, loader, label, names in (("wine", load_wine, "cultivar", WINE_CULTIVARS),
                                        ("breast_cancer", load_breast_cancer, "diagnosis", None),
                                        ("iris", load_iris, "species", None)):
        bunch = loader()
        classes = names or [str(c) for c in bunch.target_names]
        columns = [("id", "integer"), *[(_column(n), "real") for n in bunch.feature_names], (label, "text")]
        rows = [(i + 1, *[float(v) for v in values], classes[int(target)])
                for i, (values, target) in enumerate(zip(bunch.data, bunch.target))]
        tables[table] = (columns, rows)
    return tables


def create_demo_tables(url: str, overwrite: bool = False) -> list[str]:
    """Write the demo tables into the database at ``url``; returns their names."""
    tables = demo_tables()
    for table, (columns, rows) in tables.items():
        write_table(url, table, None, columns, rows, overwrite=overwrite)
    return list(tables)


def _load_into_server(url: str, overwrite: bool) -> None:
    """The demo tables into the database at ``url`` (not SQLite), or a ConfigError saying why not."""
    shown = re.sub(r"(://[^/:@\s]+:)[^@\s/]+@", r"\1***@", url)  # no password on the screen
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise ConfigError(f"--demo-db {shown}: databases other than SQLite need SQLAlchemy and the database's "
                          f"driver: {INSTALL_HINT} (and e.g. psycopg[binary] for PostgreSQL).") from None
    try:
        create_demo_tables(url, overwrite=overwrite)
    except ConfigError as error:
        message = str(error).removeprefix("Invalid config: key 'data.options.url' has the value ").replace(url, shown)
        raise ConfigError(f"Cannot load the demo tables into {shown}: {message}") from None


def create_demo_db(path: Union[str, Path], overwrite: bool = False) -> str:
    """Create (or add the tables to) the SQLite file ``path``; returns its URL ``sqlite:////abs/path``.

    ``path`` may also be a database URL: ``sqlite:///file.db`` is that file; any other URL
    (``postgresql+psycopg://user@host/name``) gets the tables in that database, through SQLAlchemy and the
    database's driver (a ``ConfigError`` when they are missing or the server refuses; nothing is written
    locally)."""
    text = str(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        if url_scheme(text) != "sqlite":
            _load_into_server(text, overwrite)
            return text
        file_path = sqlite_path(text)
        if not file_path:
            raise ConfigError(f"{text!r} names no SQLite file; write sqlite:///demo.db or sqlite:////abs/demo.db.")
        path = file_path
    file = Path(path).expanduser().resolve()
    if file.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give the path of a SQLite file, e.g. demo.db.")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(file).close()
    except (OSError, sqlite3.Error) as error:
        raise ResourceError(f"Cannot create the SQLite database {str(path)!r}: {error}.") from None
    url = f"sqlite:///{file}"
    create_demo_tables(url, overwrite=overwrite)
    return url
