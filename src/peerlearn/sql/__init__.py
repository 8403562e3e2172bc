"""Train, predict and evaluate with SQL statements (SQLFlow's idea on peerlearn's recipes).

    SELECT * FROM wine TO TRAIN mutual WITH train.epochs = 30 LABEL cultivar INTO wine_dml;
    SELECT * FROM wine TO PREDICT wine_predicted.cultivar USING wine_dml;
    SELECT * FROM wine TO EVALUATE wine_dml LABEL cultivar;
    SHOW TRAIN wine_dml;

``peerlearn.sql.run(statement, db=URL)`` runs one and returns a ``SqlResult``; ``peerlearn sql "STATEMENT"
--db URL`` does the same on the command line. Needs ``pip install 'peerlearn[sql]'`` (sqlglot, SQLAlchemy).
See docs/sql.md. (sqlglot is imported only when a statement runs.)
"""

from __future__ import annotations


def run(statement: str, db=None, models=None, overwrite: bool = False, trust_code: bool = False):
    """Run one statement; see ``peerlearn.sql.runner.run`` (``trust_code``: code named by the WITH clause or by a
    stored model that is not yours, see docs/reliability.md)."""
    from peerlearn.sql.runner import run as run_statement

    return run_statement(statement, db=db, models=models, overwrite=overwrite, trust_code=trust_code)


def create_demo_db(path, overwrite: bool = False) -> str:
    """Create the demo SQLite database (wine, breast_cancer, iris tables); returns its URL."""
    from peerlearn.sql.demo import create_demo_db as create

    return create(path, overwrite=overwrite)


__all__ = ["create_demo_db", "run"]
