"""Alembic environment: the URL comes from POSTWARDEN_DATABASE_URL or the Postwarden config."""

import os
import sys

from alembic import context
from sqlalchemy import Connection

from app.config import ConfigError, load_config
from app.db import make_engine
from app.models import Base


def database_url() -> str:
    url = (
        context.config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("POSTWARDEN_DATABASE_URL")
    )
    if url:
        return url
    try:
        config = load_config()
    except ConfigError as e:
        sys.exit(f"alembic: {e}")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return config.resolved_database_url


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = make_engine(database_url(), create=True)  # the one place a SQLite file is created
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
