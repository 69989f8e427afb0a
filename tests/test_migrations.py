"""The alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import engine_for
from app.migrate import downgrade_database, upgrade_database
from app.models import Base


def schema_differences(url: str) -> list[object]:
    with engine_for(url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def tables(url: str) -> set[str]:
    return set(inspect(engine_for(url)).get_table_names()) - {"alembic_version"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.db'}"
    return request.getfixturevalue("postgres_url")


def test_upgrade_head_matches_models(empty_database: str) -> None:
    upgrade_database(empty_database)
    assert tables(empty_database) == set(Base.metadata.tables)
    assert schema_differences(empty_database) == []


def test_downgrade_removes_everything_and_upgrade_again_works(empty_database: str) -> None:
    upgrade_database(empty_database)
    downgrade_database(empty_database)
    assert tables(empty_database) == set()
    upgrade_database(empty_database)
    assert schema_differences(empty_database) == []
