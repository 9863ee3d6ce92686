"""A tiny instrument for tests: 4 detectors, 3 filters."""

from services.instruments import DetectorDef, FilterDef, Instrument


class DummyCam(Instrument):
    name = "DummyCam"
    filters = (
        FilterDef("dummy_g", "g"),
        FilterDef("dummy_r", "r"),
        FilterDef("dummy_i", "i"),
    )
    detectors = tuple(
        DetectorDef(i, f"D{i:02d}", f"SN-{1000 + i}", "science" if i < 3 else "guider")
        for i in range(4)
    )
