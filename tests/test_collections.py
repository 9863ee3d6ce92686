"""Collections: types, chains (modes, cycles, history), freezing."""

from __future__ import annotations

import pytest

from services.butler import Butler
from services.core.errors import (
    ChainCycleError,
    CollectionExistsError,
    CollectionFrozenError,
    CollectionTypeError,
    MissingCollectionError,
)
from services.core.timespan import now_ns
from services.registry.collections import CollectionType


def test_register_and_list(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    assert registry.register_collection("b/run", CollectionType.RUN) is True
    assert registry.register_collection("b/run", CollectionType.RUN) is False
    registry.register_collection("a/calib", CollectionType.CALIBRATION, doc="masters")
    listed = [(c.name, c.type.value, c.doc) for c in registry.query_collections()]
    assert listed == [("a/calib", "CALIBRATION", "masters"), ("b/run", "RUN", None)]
    with pytest.raises(CollectionExistsError, match="already exists as RUN, not TAGGED"):
        registry.register_collection("b/run", CollectionType.TAGGED)
    with pytest.raises(MissingCollectionError, match="no collection 'nope'"):
        registry.get_collection("nope")


def test_chain_modes(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    for name in ("r1", "r2", "r3"):
        registry.register_run(name)
    assert registry.set_chain("c", ["r1", "r2"]) == ["r1", "r2"]
    assert registry.set_chain("c", ["r3"], "prepend") == ["r3", "r1", "r2"]
    assert registry.set_chain("c", ["r1"], "extend") == ["r3", "r2", "r1"]
    assert registry.set_chain("c", ["r2"], "remove") == ["r3", "r1"]
    assert registry.set_chain("c", ["r2", "r3"], "redefine") == ["r2", "r3"]
    assert registry.get_chain("c") == ["r2", "r3"]
    with pytest.raises(MissingCollectionError):
        registry.set_chain("c", ["r9"])
    with pytest.raises(CollectionExistsError, match="'r1' already exists as RUN, not CHAINED"):
        registry.set_chain("r1", ["r2"])
    with pytest.raises(CollectionTypeError, match=r"twice"):
        registry.set_chain("c", ["r1", "r1"])


def test_chain_cycles_are_refused(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    registry.register_run("r")
    registry.set_chain("outer", ["r"])
    registry.set_chain("inner", ["outer"])
    with pytest.raises(ChainCycleError, match="would make a cycle"):
        registry.set_chain("outer", ["inner"])
    with pytest.raises(ChainCycleError):
        registry.set_chain("outer", ["outer"])
    assert registry.get_chain("outer") == ["r"]


def test_nested_chains_flatten_in_order(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    for name in ("a", "b", "c"):
        registry.register_run(name)
    registry.set_chain("inner", ["b", "a"])
    registry.set_chain("outer", ["c", "inner", "a"])
    assert registry.resolve_collections(["outer"]) == ["c", "b", "a"]


def test_chain_history_as_of(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    for name in ("old", "new"):
        registry.register_run(name)
    before = now_ns()
    registry.set_chain("c", ["old"])
    t1 = now_ns()
    registry.set_chain("c", ["new", "old"])
    t2 = now_ns()
    registry.set_chain("c", [], "redefine")
    assert registry.get_chain("c") == []
    assert registry.get_chain("c", as_of=t1) == ["old"]
    assert registry.get_chain("c", as_of=t2) == ["new", "old"]
    assert registry.get_chain("c", as_of=before) == []


def test_frozen_collection_refuses_changes(empty_butler: Butler) -> None:
    registry = empty_butler.registry
    registry.register_run("r")
    registry.set_chain("c", ["r"])
    frozen = registry.freeze_collection("c")
    assert frozen.frozen_at is not None
    with pytest.raises(CollectionFrozenError, match=r"collection .c. is frozen since .* TAI"):
        registry.set_chain("c", [])
    assert registry.get_chain("c") == ["r"]
    # Freezing again is harmless and keeps the first moment.
    assert registry.freeze_collection("c").frozen_at == frozen.frozen_at
