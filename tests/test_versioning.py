"""Registry schema versions: a repo at another schema version is refused with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from services.butler import Butler
from services.core.errors import RepoExistsError, RepoNotFoundError, SchemaVersionError
from services.registry import versioning
from services.registry.collections import CollectionType


def _stamp(butler: Butler, revision: str | None) -> None:
    with butler.registry.transaction() as conn:
        if revision is None:
            conn.execute(text("DELETE FROM alembic_version"))
        else:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_new_repo_is_at_head(empty_butler: Butler) -> None:
    with empty_butler.registry.transaction() as conn:
        assert versioning.current_revision(conn) == versioning.head_revision()


def test_unknown_newer_schema_is_refused(empty_butler: Butler) -> None:
    _stamp(empty_butler, "9999_future")
    with pytest.raises(SchemaVersionError) as info:
        Butler.open(empty_butler.root)
    message = str(info.value)
    assert "registry schema 9999_future, unknown to this obsbus" in message
    assert "upgrade obsbus" in message


def test_missing_schema_is_refused(empty_butler: Butler) -> None:
    _stamp(empty_butler, None)
    with pytest.raises(SchemaVersionError, match="has no obsbus registry schema"):
        Butler.open(empty_butler.root)


def test_repo_errors(tmp_path: Path) -> None:
    with pytest.raises(RepoNotFoundError, match="is not an obsbus repository"):
        Butler.open(tmp_path / "nothing")
    Butler.create(tmp_path / "r").close()
    with pytest.raises(RepoExistsError, match="already an obsbus repository"):
        Butler.create(tmp_path / "r")


def test_older_schema_is_refused_until_migrated(empty_butler: Butler) -> None:
    from alembic import command

    with empty_butler.registry.db.engine.begin() as conn:  # a schema change, not a write
        command.downgrade(versioning._config(conn), "0001")
    empty_butler.close()
    with pytest.raises(SchemaVersionError) as info:
        Butler.open(empty_butler.root)
    message = str(info.value)
    assert "registry schema 0001, older than this obsbus" in message
    assert "obsbus migrate REPO" in message
    from services.cli.main import main

    assert main(["migrate", str(empty_butler.root)]) == 0
    with Butler.open(empty_butler.root) as again:
        assert again.registry.query_collections() == []
        # A write works: migration 0004 made the write generation's row.
        assert again.registry.register_collection("u/test", CollectionType.RUN)
        assert again.registry.db.last_generation == 1
