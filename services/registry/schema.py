"""The registry's tables, built from the dimension universe.

Dimension element tables are named ``dim_<element>``; their columns are the element's key
fields, implied dimensions and metadata, and ``timespan_begin``/``timespan_end`` (TAI ns).
Datasets carry one nullable column per dimension (only their dataset type's dimensions are
filled) plus ``data_id_key``, the canonical data ID text used for exact matching.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Constraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    event,
)
from sqlalchemy.types import TypeEngine

from ..core.dimensions import DimensionUniverse, Field

_TYPES: dict[str, type[TypeEngine[Any]]] = {
    "int": BigInteger,
    "float": Float,
    "bool": Boolean,
}

# Non-overlapping validity per (collection, dataset type, data ID) among live rows, enforced
# by PostgreSQL itself so concurrent certifiers cannot both win. SQLite relies on its
# single-writer transactions instead.
CALIB_EXCLUSION = (
    "ALTER TABLE calib_validity ADD CONSTRAINT calib_validity_no_overlap "
    "EXCLUDE USING gist (collection_id WITH =, dataset_type_id WITH =, data_id_key WITH =, "
    "int8range(begin_ns, end_ns) WITH &&) WHERE (decertified_at IS NULL)"
)
CALIB_EXCLUSION_NAME = "calib_validity_no_overlap"


def _column_type(field: Field) -> TypeEngine[Any]:
    if field.type == "string":
        return String(field.length or 256)
    return _TYPES[field.type]()


def element_table_name(element: str) -> str:
    return f"dim_{element}"


def build_metadata(universe: DimensionUniverse) -> MetaData:
    md = MetaData()
    _add_dimension_tables(md, universe)
    _add_core_tables(md, universe)
    return md


def _add_dimension_tables(md: MetaData, universe: DimensionUniverse) -> None:
    def key_field(dim: str) -> Field:
        key = universe[dim].key
        assert key is not None
        return key

    for element in universe:
        columns: list[Column[Any]] = []
        constraints: list[Constraint] = []
        for dim in element.requires:
            columns.append(Column(dim, _column_type(key_field(dim)), primary_key=True))
        if element.key is not None:
            columns.append(Column(element.key.name, _column_type(element.key), primary_key=True))
        for dim in element.implies:
            columns.append(Column(dim, _column_type(key_field(dim)), nullable=True))
        for f in element.fields:
            columns.append(Column(f.name, _column_type(f), nullable=True, comment=f.doc or None))
        if element.has_timespan:
            columns.append(Column("timespan_begin", BigInteger, nullable=True))
            columns.append(Column("timespan_end", BigInteger, nullable=True))
        # Foreign keys to the records this one requires or implies.
        for dim in (*element.requires, *element.implies):
            parent = universe[dim]
            local = [*parent.requires, dim]
            remote = [f"{element_table_name(dim)}.{c}" for c in parent.key_columns]
            constraints.append(ForeignKeyConstraint(local, remote))
        for name in element.unique:
            constraints.append(UniqueConstraint(*element.requires, name))
        if element.has_timespan and not element.is_dimension:
            # A join with history: several periods per key, distinguished by their start.
            for c in columns:
                if c.name == "timespan_begin":
                    c.primary_key = True
                    c.nullable = False
        Table(element_table_name(element.name), md, *columns, *constraints, comment=element.doc)


def _add_core_tables(md: MetaData, universe: DimensionUniverse) -> None:
    Table(
        "dataset_type",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(128), nullable=False, unique=True),
        Column("dimensions", String(256), nullable=False),
        Column("storage_class", String(64), nullable=False),
        Column("is_calibration", Boolean, nullable=False),
    )
    Table(
        "collection",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(256), nullable=False, unique=True),
        Column("type", String(16), nullable=False),
        Column("doc", Text, nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("frozen_at", BigInteger, nullable=True),
        Column("frozen_by", Text, nullable=True),
    )
    # Chains keep every definition they ever had: a row is current while superseded_at is NULL,
    # and was current at moment T when defined_at <= T < superseded_at.
    Table(
        "collection_chain",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("parent_id", ForeignKey("collection.id"), nullable=False),
        Column("position", Integer, nullable=False),
        Column("child_id", ForeignKey("collection.id"), nullable=False),
        Column("defined_at", BigInteger, nullable=False),
        Column("superseded_at", BigInteger, nullable=True),
        Column("command", Text, nullable=True),
        Index("collection_chain_parent", "parent_id", "superseded_at"),
    )
    dim_columns = []
    for dim in universe.dimensions:
        assert dim.key is not None
        dim_columns.append(Column(dim.name, _column_type(dim.key), nullable=True))
    Table(
        "dataset",
        md,
        Column("id", Uuid, primary_key=True),
        Column("dataset_type_id", ForeignKey("dataset_type.id"), nullable=False),
        Column("run_id", ForeignKey("collection.id"), nullable=False),
        Column("data_id_key", String(512), nullable=False),
        Column("ingest_date", BigInteger, nullable=False),
        *dim_columns,
        UniqueConstraint("dataset_type_id", "run_id", "data_id_key"),
        Index("dataset_lookup", "dataset_type_id", "data_id_key"),
    )
    Table(
        "dataset_tag",
        md,
        Column("collection_id", ForeignKey("collection.id"), primary_key=True),
        Column("dataset_id", ForeignKey("dataset.id"), primary_key=True),
        Column("dataset_type_id", ForeignKey("dataset_type.id"), nullable=False),
        Column("data_id_key", String(512), nullable=False),
        UniqueConstraint("collection_id", "dataset_type_id", "data_id_key"),
    )
    # Validity rows are never deleted: decertify stamps decertified_at (and may insert the
    # remaining pieces), so lookups "as of" a past moment see exactly what was live then.
    calib = Table(
        "calib_validity",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("collection_id", ForeignKey("collection.id"), nullable=False),
        Column("dataset_type_id", ForeignKey("dataset_type.id"), nullable=False),
        Column("data_id_key", String(512), nullable=False),
        Column("dataset_id", ForeignKey("dataset.id"), nullable=False),
        Column("begin_ns", BigInteger, nullable=False),
        Column("end_ns", BigInteger, nullable=False),
        Column("certified_at", BigInteger, nullable=False),
        Column("certified_by", Text, nullable=True),
        Column("decertified_at", BigInteger, nullable=True),
        Column("decertified_by", Text, nullable=True),
        Index("calib_validity_lookup", "collection_id", "dataset_type_id", "data_id_key"),
    )
    exclusion = DDL(CALIB_EXCLUSION)  # type: ignore[no-untyped-call]
    event.listen(calib, "after_create", exclusion.execute_if(dialect="postgresql"))
    Table(
        "datastore_record",
        md,
        Column("dataset_id", ForeignKey("dataset.id"), primary_key=True),
        Column("path", Text, nullable=False),
        Column("formatter", String(256), nullable=False),
        Column("storage_class", String(64), nullable=False),
        Column("file_size", BigInteger, nullable=False),
        Column("checksum", String(160), nullable=False),
        Column("locator", String(64), nullable=True),
    )
    # Exactly-once effect under at-least-once delivery: each consumed message is recorded in
    # the same transaction as its effect, with the messages it produced, so a redelivered
    # message is not applied again and its outputs can be sent again unchanged.
    Table(
        "bus_processed",
        md,
        Column("consumer_group", String(128), primary_key=True),
        Column("topic", String(128), primary_key=True),
        Column("partition", Integer, primary_key=True),
        Column("offset", BigInteger, primary_key=True),
        # Offsets restart if a topic is recreated: the message's own id tells a redelivery
        # from a new message that happens to sit at a recorded offset.
        Column("message_id", String(64), nullable=False),
        Column("processed_at", BigInteger, nullable=False),
        Column("outputs", LargeBinary, nullable=False),
        # A command re-sent by its producer (same id, new offset) is found by its id
        # (migration 0003).
        Index("bus_processed_message", "consumer_group", "message_id"),
    )
    # One row: the write generation, moved on by every write transaction (generation.py;
    # migration 0004).
    Table(
        "registry_generation",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("generation", BigInteger, nullable=False),
    )
    Table(
        "record_audit",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("element", String(64), nullable=False),
        Column("record_key", Text, nullable=False),
        Column("field", String(64), nullable=False),
        Column("old_value", Text, nullable=True),
        Column("new_value", Text, nullable=True),
        Column("reason", Text, nullable=False),
        Column("changed_at", BigInteger, nullable=False),
        Column("changed_by", Text, nullable=True),
    )
