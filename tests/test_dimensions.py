"""The dimension universe (dimensions.yaml) and data IDs."""

from __future__ import annotations

import pytest

from services.core.dimensions import DataId, default_universe, parse_data_id_args
from services.core.errors import DataIdError, UnknownDimensionError


def test_universe_shape() -> None:
    u = default_universe()
    assert [d.name for d in u.dimensions] == [
        "instrument",
        "band",
        "physical_filter",
        "detector",
        "physical_detector",
        "day_obs",
        "group",
        "exposure",
        "visit",
    ]
    assert u["physical_filter"].implies == ("band",)
    assert u["exposure"].implies == ("physical_filter", "group", "day_obs")
    assert u["exposure"].has_timespan and not u["detector"].has_timespan
    assert u["detector_installation"].requires == ("instrument", "detector", "physical_detector")
    assert not u["detector_installation"].is_dimension


def test_closure_and_order() -> None:
    u = default_universe()
    assert u.closure(["exposure", "detector"]) == ("instrument", "detector", "exposure")
    with pytest.raises(UnknownDimensionError, match="no dimension element 'colour'"):
        u.closure(["colour"])
    with pytest.raises(UnknownDimensionError, match="is a join"):
        u.closure(["visit_definition"])


def test_data_id_validation_and_canonical_key() -> None:
    u = default_universe()
    a = u.data_id(["detector"], {"detector": "12", "instrument": "HSC", "extra": 1})
    assert a.key == "instrument=HSC,detector=12" and a["detector"] == 12
    assert a == DataId({"instrument": "HSC", "detector": 12}) and hash(a) == hash(a.key)
    with pytest.raises(DataIdError, match="lacks detector"):
        u.data_id(["detector"], {"instrument": "HSC"})
    with pytest.raises(DataIdError, match="detector must be an integer, got 'twelve'"):
        u.data_id(["detector"], {"instrument": "HSC", "detector": "twelve"})
    with pytest.raises(DataIdError, match="longer than 32"):
        u.data_id(["instrument"], {"instrument": "x" * 40})


def test_parse_data_id_args() -> None:
    assert parse_data_id_args(["instrument=HSC", " detector = 5"]) == {
        "instrument": "HSC",
        "detector": "5",
    }
    with pytest.raises(DataIdError, match="not of the form key=value"):
        parse_data_id_args(["detector"])
