from pathlib import Path

from sqlalchemy import inspect

from app.config import load_config
from app.db import engine_for


def test_config_file_fixture_is_migrated(config_file: Path) -> None:
    url = load_config(config_file).resolved_database_url
    tables = set(inspect(engine_for(url)).get_table_names())
    assert {"accounts", "mailboxes", "messages", "outgoing", "alembic_version"} <= tables
