"""Repository configuration: ``<REPO>/obsbus.yaml``, validated with pydantic.

The embedded default is a SQLite registry and a datastore directory inside the repo folder;
``db`` points at PostgreSQL instead (``db_namespace`` is the schema holding this repo).
Environment variables ``OBSBUS_DB`` / ``OBSBUS_DB_NAMESPACE`` override the file, so a
deployment can point services at a real database without editing the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, RepoExistsError, RepoNotFoundError

CONFIG_NAME = "obsbus.yaml"
SQLITE_NAME = "registry.sqlite3"


class RepoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str | None = Field(None, description="SQLAlchemy URL; None = SQLite file in the repo")
    db_namespace: str | None = Field(None, description="PostgreSQL schema for this repo")
    datastore: str = Field("datastore", description="Datastore root, relative to the repo")
    templates: dict[str, str] = Field(
        default_factory=dict, description="File path template per dataset type"
    )

    def db_url(self, root: Path) -> str:
        url = os.environ.get("OBSBUS_DB") or self.db
        return url or f"sqlite:///{root / SQLITE_NAME}"

    def namespace(self) -> str | None:
        return os.environ.get("OBSBUS_DB_NAMESPACE") or self.db_namespace

    def datastore_root(self, root: Path) -> Path:
        return (root / self.datastore).resolve()


def check_new_repo(root: Path) -> None:
    """Refuse to make a repository where one already is."""
    if (root / CONFIG_NAME).exists():
        raise _exists(root)


def write_config(root: Path, config: RepoConfig) -> None:
    """Write ``obsbus.yaml``, never over an existing one (the file makes the folder a repo)."""
    root.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(exclude_defaults=True), sort_keys=False)
    try:
        with (root / CONFIG_NAME).open("x") as f:  # exclusive: of two concurrent creates, one wins
            f.write(text)
    except FileExistsError:
        raise _exists(root) from None


def _exists(root: Path) -> RepoExistsError:
    return RepoExistsError(f"{root} is already an obsbus repository ({root / CONFIG_NAME} exists)")


def read_config(root: Path) -> RepoConfig:
    path = root / CONFIG_NAME
    if not path.is_file():
        raise RepoNotFoundError(
            f"{root} is not an obsbus repository (no {CONFIG_NAME}); create one with "
            "`obsbus create REPO`"
        )
    try:
        return RepoConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValidationError) as err:
        first = str(err).splitlines()
        raise ConfigError(f"{path} is invalid: {' '.join(first[:3])}") from None
