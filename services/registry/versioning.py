"""Registry schema versions, managed by alembic (migrations live in ./migrations)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from ..core.errors import SchemaVersionError


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "services.registry:migrations")
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def _newer(where: str, current: str, head: str) -> SchemaVersionError:
    return SchemaVersionError(
        f"{where} has registry schema {current}, unknown to this obsbus ({head}): "
        "it was written by a newer obsbus; upgrade obsbus"
    )


def upgrade(conn: Connection, where: str | None = None) -> None:
    """Bring the schema up to date; refuse (as `check` does) one from a newer obsbus."""
    current = current_revision(conn)
    if current is not None and current not in _known_revisions():
        if where is None:
            where = f"registry {conn.engine.url.render_as_string(hide_password=True)}"
        raise _newer(where, current, head_revision())
    command.upgrade(_config(conn), "head")


def check(conn: Connection, where: str) -> None:
    """Refuse to work on a registry whose schema is not the one this obsbus writes."""
    current, head = current_revision(conn), head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaVersionError(
            f"{where} has no obsbus registry schema; create it with `obsbus create`"
        )
    if current in _known_revisions():
        raise SchemaVersionError(
            f"{where} has registry schema {current}, older than this obsbus ({head}); "
            "upgrade it with `obsbus migrate REPO`"
        )
    raise _newer(where, current, head)
