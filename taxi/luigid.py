"""`luigid` with task history on SQLAlchemy 2: `python -m taxi.luigid [luigid options]`.

Luigi 3.8's history schema upgrade passes raw SQL strings, which SQLAlchemy 2 (needed by MLflow) refuses
(spotify/luigi#3227). This entry point swaps in the same upgrade written with `sqlalchemy.text`.
"""

from __future__ import annotations

import logging

import luigi.cmdline
import luigi.db_task_history
import sqlalchemy

log = logging.getLogger(__name__)

_TEXT_VALUE_SQL = {
    "mysql": "ALTER TABLE task_parameters MODIFY COLUMN value TEXT",
    "oracle": "ALTER TABLE task_parameters MODIFY value TEXT",
    "mssql": "ALTER TABLE task_parameters ALTER COLUMN value TEXT",
    "postgresql": "ALTER TABLE task_parameters ALTER COLUMN value TYPE TEXT",
}


def upgrade_schema(engine) -> None:
    """Luigi's two history-schema upgrades (tasks.task_id; TEXT parameter values), SQLAlchemy 2 style."""
    inspector = sqlalchemy.inspect(engine)
    with engine.begin() as conn:
        if "task_id" not in [c["name"] for c in inspector.get_columns("tasks")]:
            log.warning("Upgrading DbTaskHistory schema: adding tasks.task_id")
            conn.execute(sqlalchemy.text("ALTER TABLE tasks ADD COLUMN task_id VARCHAR(200)"))
            conn.execute(sqlalchemy.text("CREATE INDEX ix_task_id ON tasks (task_id)"))
        value = [c for c in inspector.get_columns("task_parameters") if c["name"] == "value"][0]
        sql = _TEXT_VALUE_SQL.get(engine.dialect.name)
        if sql and str(value["type"]) != "TEXT":
            conn.execute(sqlalchemy.text(sql))
        elif engine.dialect.name == "sqlite" and str(value["type"]) != "TEXT":
            log.warning("SQLite cannot change column types: use a new task history database")


def main() -> None:
    luigi.db_task_history._upgrade_schema = upgrade_schema
    luigi.cmdline.luigid()


if __name__ == "__main__":
    main()
