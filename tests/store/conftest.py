"""Fixtures of the store's tests."""

from __future__ import annotations

import pytest

from app.migrate import upgrade_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind."""
    database_url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    if request.param == "postgresql":
        upgrade_database(database_url)
    return database_url
