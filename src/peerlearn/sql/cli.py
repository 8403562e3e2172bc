"""The ``peerlearn sql`` subcommand: its arguments and what it prints (the work is in ``peerlearn.sql``)."""

from __future__ import annotations

import argparse

from peerlearn.errors import ConfigError

DESCRIPTION = """Run one SQL statement that trains, evaluates or applies a model:
  SELECT ... TO TRAIN <recipe> [WITH key = value, ...] [COLUMN c1, c2, ...] LABEL <column> INTO <model>;
  SELECT ... TO PREDICT <table>.<column> [WITH probabilities = true, ...] USING <model>;
  SELECT ... TO EVALUATE <model> LABEL <column>;
  SHOW TRAIN <model>;
A model is the run directory MODELS/<model>. The database is only read, except for the new table that
TO PREDICT writes. `peerlearn sql --demo-db demo.db` creates a SQLite database with the wine,
breast_cancer and iris tables from scikit-learn. See docs/sql.md."""


def add_sql_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sql", help="train, predict and evaluate with SQL statements (SQLFlow style)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("statement", nargs="?", help="one statement, in quotes")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="database URL (sqlite:///file.db, postgresql+psycopg://user@host/name) or a SQLite file")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="the model store (default: $PEERLEARN_MODELS, else ./models)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let TO TRAIN replace a model and TO PREDICT a table of the same name")
    parser.add_argument("--progress", default="auto", choices=["auto", "on", "off"],
                        help="progress on standard error: auto (a bar on a terminal, else a line every few "
                             "seconds of slow work), on (a bar), off")
    parser.add_argument("--trust-code", action="store_true",
                        help="let the statement's WITH clause and the stored models it reads name code (a "
                             "package.module:callable model) although they are not yours; see docs/reliability.md")
    parser.add_argument("--demo-db", default=None, metavar="PATH|URL",
                        help="create the demo SQLite database PATH (wine, breast_cancer, iris) and exit; a database "
                             "URL (postgresql+psycopg://user@host/name) gets the tables in that database")
    return parser


def cmd_sql(args: argparse.Namespace) -> int:
    if args.demo_db is not None:
        if args.statement:
            raise ConfigError("Give either --demo-db PATH or a statement, not both.")
        from peerlearn.sql.demo import create_demo_db

        url = create_demo_db(args.demo_db, overwrite=args.overwrite)
        from peerlearn.sql.runner import hide_password

        print(f"demo database with tables wine, breast_cancer, iris: {hide_password(url)}")
        return 0
    if not args.statement:
        raise ConfigError('peerlearn sql needs a statement in quotes, e.g. peerlearn sql "SELECT * FROM wine TO '
                          'TRAIN mutual LABEL cultivar INTO wine_dml" --db demo.db (or --demo-db PATH).')
    from peerlearn.sql.runner import run

    result = run(args.statement, db=args.db, models=args.models, overwrite=args.overwrite,
                 trust_code=args.trust_code, progress=args.progress)
    print(result.text)
    return 0
