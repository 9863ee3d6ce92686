"""Dataset types, dataset ids, RUN/TAGGED membership, queries, and ingest through the Butler."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from services.butler import Butler, FileToIngest
from services.core.errors import (
    CollectionFrozenError,
    DataIdError,
    DatasetConflictError,
    DatasetNotFoundError,
    DatasetTypeConflictError,
    DatasetTypeError,
    ExpressionError,
    MissingDatasetTypeError,
    TransferError,
)
from services.registry.collections import CollectionType
from services.registry.datasets import DatasetRef, DatasetType, IdGenerationMode
from tests.support.records import add_exposure

BIAS = DatasetType("bias", ("instrument", "detector"), "StructuredDataDict", True)
NOTE = DatasetType("note", ("exposure", "detector"), "StructuredDataDict")


def write_yaml(path: Path, content: object) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_dataset_type_definition_rules(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    assert registry.register_dataset_type(NOTE) is True
    assert registry.register_dataset_type(NOTE) is False
    stored = registry.get_dataset_type("note")
    # Required dimensions are filled in and put in universe order.
    assert stored.dimensions == ("instrument", "detector", "exposure")
    changed = DatasetType("note", ("exposure",), "Json", True)
    with pytest.raises(DatasetTypeConflictError) as info:
        registry.register_dataset_type(changed)
    message = str(info.value)
    assert "dataset type 'note' is already defined differently" in message
    assert "storage_class: 'StructuredDataDict' -> 'Json'" in message
    assert "is_calibration: False -> True" in message
    with pytest.raises(DatasetTypeError, match="invalid dataset type name"):
        registry.register_dataset_type(DatasetType("9bad", (), "Json"))
    with pytest.raises(MissingDatasetTypeError, match="no dataset type 'flat'"):
        registry.get_dataset_type("flat")
    assert [t.name for t in registry.query_dataset_types()] == ["note"]


def test_deterministic_ids(butler: Butler) -> None:
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    data_id = {"instrument": "DummyCam", "detector": 1}
    mode = IdGenerationMode.DATAID_TYPE_RUN
    a = registry.make_ref("bias", data_id, "run1", mode)
    b = registry.make_ref("bias", {"detector": "1", "instrument": "DummyCam"}, "run1", mode)
    c = registry.make_ref("bias", data_id, "run2", mode)
    assert a.id == b.id and a.id.version == 5
    assert c.id != a.id
    assert registry.make_ref("bias", data_id, "run1").id != a.id  # UNIQUE by default


def test_ingest_get_and_repeat(butler: Butler, tmp_path: Path) -> None:
    butler.registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "b.yaml", {"level": 1000})
    ref = butler.registry.make_ref(
        "bias",
        {"instrument": "DummyCam", "detector": 2},
        "calib/run",
        IdGenerationMode.DATAID_TYPE_RUN,
    )
    assert butler.ingest([FileToIngest(src, ref)]) == ["inserted"]
    assert butler.ingest([FileToIngest(src, ref)]) == ["already-present"]
    assert butler.get(ref) == {"level": 1000}
    stored = butler.stored_file(ref)
    assert stored.formatter == "services.datastore.formatters.YamlFormatter"
    assert stored.storage_class == "StructuredDataDict"
    assert stored.file_size == src.stat().st_size and stored.checksum.startswith("blake2b:")
    assert butler.uri(ref).startswith("file://" + str(butler.root))
    assert butler.registry.get_collection("calib/run").type is CollectionType.RUN
    # Reading back needs only the datastore record: a new Butler on the same repo does it.
    with Butler.open(butler.root) as again:
        assert again.get(ref.id) == {"level": 1000}


def test_same_data_id_twice_in_a_run_is_a_conflict(butler: Butler, tmp_path: Path) -> None:
    butler.registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "b.yaml", {})
    data_id = {"instrument": "DummyCam", "detector": 2}
    butler.ingest([FileToIngest(src, butler.registry.make_ref("bias", data_id, "r"))])
    with pytest.raises(DatasetConflictError, match="run 'r' already has a bias for"):
        butler.ingest([FileToIngest(src, butler.registry.make_ref("bias", data_id, "r"))])


def test_failed_ingest_leaves_no_file_and_no_row(butler: Butler, tmp_path: Path) -> None:
    butler.registry.register_dataset_type(BIAS)
    good = write_yaml(tmp_path / "good.yaml", {"ok": True})
    refs = [
        butler.registry.make_ref("bias", {"instrument": "DummyCam", "detector": d}, "r")
        for d in (0, 1)
    ]
    files = [FileToIngest(good, refs[0]), FileToIngest(tmp_path / "missing.yaml", refs[1])]
    with pytest.raises(TransferError, match=r"missing.yaml"):
        butler.ingest(files)
    with pytest.raises(DatasetNotFoundError):
        butler.registry.get_dataset(refs[0].id)
    stored = [p for p in butler.datastore.root.rglob("*") if p.is_file()]
    assert stored == []


def test_move_transfer_is_undone_when_the_database_refuses(butler: Butler, tmp_path: Path) -> None:
    butler.registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "b.yaml", {"v": 1})
    bad = DatasetRef(
        uuid.uuid4(),
        butler.registry.get_dataset_type("bias"),
        butler.registry.universe.data_id(
            BIAS.dimensions, {"instrument": "DummyCam", "detector": 0}
        ),
        "r",
    )
    butler.registry.register_run("r")
    butler.registry.freeze_collection("r")
    with pytest.raises(CollectionFrozenError):
        butler.ingest([FileToIngest(src, bad)], transfer="move")
    assert src.exists()


def test_unregistered_data_id_values_are_refused(butler: Butler, tmp_path: Path) -> None:
    butler.registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "b.yaml", {})
    ref = butler.registry.make_ref("bias", {"instrument": "DummyCam", "detector": 42}, "r")
    with pytest.raises(DataIdError, match="detector=42 is not registered"):
        butler.ingest([FileToIngest(src, ref)])
    with pytest.raises(DataIdError, match="lacks detector"):
        butler.registry.make_ref("bias", {"instrument": "DummyCam"}, "r")


def test_tagged_collections(butler: Butler, tmp_path: Path) -> None:
    registry = butler.registry
    registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "b.yaml", {})
    refs = [
        registry.make_ref("bias", {"instrument": "DummyCam", "detector": d}, f"r{n}")
        for n, d in ((1, 0), (2, 0), (1, 1))
    ]
    butler.ingest([FileToIngest(src, r) for r in refs])
    registry.register_collection("best", CollectionType.TAGGED)
    registry.associate("best", [refs[0], refs[2]])
    registry.associate("best", [refs[0]])  # idempotent
    with pytest.raises(DatasetConflictError, match="already holds another bias"):
        registry.associate("best", [refs[1]])
    found = butler.find("bias", {"instrument": "DummyCam", "detector": 0}, ["best"])
    assert found.ref.id == refs[0].id and found.collection == "best"
    registry.disassociate("best", [refs[0]])
    registry.associate("best", [refs[1]])
    assert (
        butler.find("bias", {"instrument": "DummyCam", "detector": 0}, ["best"]).ref.id
        == refs[1].id
    )


def test_query_datasets_where_and_find_first(butler: Butler, tmp_path: Path) -> None:
    registry = butler.registry
    registry.register_dataset_type(NOTE)
    add_exposure(registry, 1, "2024-01-01T00:00:00", physical_filter="dummy_g")
    add_exposure(registry, 2, "2024-01-01T00:01:00", observation_type="bias")
    src = write_yaml(tmp_path / "n.yaml", {})
    files = []
    for run in ("old", "new"):
        for exposure in (1, 2):
            for detector in (0, 1):
                data_id = {"instrument": "DummyCam", "exposure": exposure, "detector": detector}
                files.append(FileToIngest(src, registry.make_ref("note", data_id, run)))
    butler.ingest(files)
    registry.set_chain("both", ["new", "old"])

    def keys(expr: str | None, first: bool = False) -> list[tuple[str, int, int]]:
        found = registry.query_datasets("note", ["both"], expr, find_first=first)
        return [(name, ref.data_id["exposure"], ref.data_id["detector"]) for ref, name in found]

    assert len(keys(None)) == 8
    assert keys("detector = 1 AND exposure = 2") == [("new", 2, 1), ("old", 2, 1)]
    assert keys("exposure.observation_type = 'bias' AND detector = 0", first=True) == [
        ("new", 2, 0)
    ]
    assert keys("exposure.physical_filter = 'dummy_g'", first=True) == [
        ("new", 1, 0),
        ("new", 1, 1),
    ]
    with pytest.raises(ExpressionError, match="has no dimension 'visit'"):
        keys("visit = 3")
    with pytest.raises(ExpressionError, match="band is not a dimension of note"):
        keys("band.name = 'g'")


def test_one_insert_of_datasets_with_different_dimensions(butler: Butler, tmp_path: Path) -> None:
    registry = butler.registry
    registry.register_dataset_type(DatasetType("camera", ("instrument",), "StructuredDataDict"))
    registry.register_dataset_type(BIAS)
    src = write_yaml(tmp_path / "x.yaml", {})
    camera = registry.make_ref("camera", {"instrument": "DummyCam"}, "r")
    bias = registry.make_ref("bias", {"instrument": "DummyCam", "detector": 2}, "r")
    butler.ingest([FileToIngest(src, camera), FileToIngest(src, bias)])
    (found,) = registry.query_datasets("bias", ["r"])
    assert found[0].data_id == {"instrument": "DummyCam", "detector": 2}
    assert registry.query_datasets("bias", ["r"], "detector = 2") != []


def test_as_of_a_moment_before_a_dataset_was_ingested(butler: Butler, tmp_path: Path) -> None:
    from services.core.timespan import now_ns

    butler.registry.register_dataset_type(BIAS)
    before = now_ns()
    ref = butler.registry.make_ref("bias", {"instrument": "DummyCam", "detector": 1}, "r")
    butler.ingest([FileToIngest(write_yaml(tmp_path / "b.yaml", {}), ref)])
    data_id = {"instrument": "DummyCam", "detector": 1}
    assert butler.registry.find_dataset("bias", data_id, ["r"], as_of=before) is None
    found = butler.registry.find_dataset("bias", data_id, ["r"], as_of=now_ns())
    assert found is not None and found.ref.id == ref.id
