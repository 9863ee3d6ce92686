"""Tests of the file datastore: formatters, storage classes, templates, transfers, rollback."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from services.core.errors import (
    ChecksumError,
    ConfigError,
    DatastoreError,
    FormatterError,
    PathEscapeError,
    StorageClassError,
    TransferError,
)
from services.datastore import (
    DEFAULT_TEMPLATE,
    STORAGE_CLASSES,
    TRANSFER_MODES,
    EcsvFormatter,
    FileDatastore,
    FitsImageFormatter,
    JsonFormatter,
    PathTemplate,
    StoredFile,
    YamlFormatter,
    formatter_for_file,
    formatter_import_path,
    get_storage_class,
    load_formatter,
    sanitize,
)

RAW_ID: dict[str, str | int] = {"instrument": "HSC", "exposure": 903334, "detector": 16}
LINKED_MODES = ("copy", "move", "hardlink", "symlink")


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def ds(root: Path) -> FileDatastore:
    return FileDatastore(root)


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    """A small raw-like FITS file outside the datastore: empty primary HDU + one image."""
    src = tmp_path / "incoming"
    src.mkdir()
    path = src / "HSCA90333416.fits"
    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = "Hyper Suprime-Cam"
    primary.header["EXPID"] = 903334
    image = fits.ImageHDU(data=np.arange(12, dtype=np.float32).reshape(3, 4))
    image.header["DETECTOR"] = 16
    fits.HDUList([primary, image]).writeto(path)
    return path


def ingest(ds: FileDatastore, source: Path, transfer: str, **overrides: Any) -> StoredFile:
    args: dict[str, Any] = {
        "dataset_id": uuid.uuid4(),
        "dataset_type": "raw",
        "run": "HSC/raw/all",
        "data_id": RAW_ID,
        "storage_class": "Image",
        "formatter": None,
        "transfer": transfer,
    }
    args.update(overrides)
    with ds.transaction() as txn:
        return txn.ingest(source, **args)


def put(ds: FileDatastore, obj: Any, storage_class: str, **overrides: Any) -> StoredFile:
    args: dict[str, Any] = {
        "dataset_id": uuid.uuid4(),
        "dataset_type": "thing",
        "run": "u/someone/run1",
        "data_id": {"instrument": "HSC", "detector": 1},
        "storage_class": storage_class,
    }
    args.update(overrides)
    with ds.transaction() as txn:
        return txn.put(obj, **args)


def files_under(path: Path) -> list[str]:
    """Every file, symlink and directory under ``path`` (relative), for 'nothing left' checks."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def blake2b_of(path: Path) -> str:
    return "blake2b:" + hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()


class BoomError(Exception):
    pass


# --- formatters -------------------------------------------------------------------------------


def test_fits_round_trip_and_components(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.int32).reshape(4, 5)
    path = tmp_path / "img.fits"
    FitsImageFormatter().write(data, path)
    back = FitsImageFormatter().read(path)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, data)
    header = FitsImageFormatter().read(path, "header")
    assert isinstance(header, fits.Header)
    assert header["NAXIS1"] == 5 and header["NAXIS2"] == 4


def test_fits_reads_first_image_extension_and_merges_metadata(raw_file: Path) -> None:
    fmt = FitsImageFormatter()
    np.testing.assert_array_equal(fmt.read(raw_file), np.arange(12).reshape(3, 4))
    header = fmt.read(raw_file, "header")
    assert header["DETECTOR"] == 16 and "EXPID" not in header
    metadata = fmt.read(raw_file, "metadata")
    assert metadata["EXPID"] == 903334 and metadata["DETECTOR"] == 16
    assert "XTENSION" not in metadata  # structural cards of the extension are dropped


def test_fits_without_image_is_a_formatter_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(path)
    with pytest.raises(FormatterError, match="no image HDU"):
        FitsImageFormatter().read(path)


@pytest.mark.parametrize("formatter", [YamlFormatter(), JsonFormatter()])
def test_structured_round_trip(tmp_path: Path, formatter: Any) -> None:
    obj = {"b": [1, 2.5, "x"], "a": {"nested": True, "none": None}, "ü": "ünïcode"}
    path = tmp_path / f"obj{formatter.extension}"
    formatter.write(obj, path)
    assert formatter.read(path) == obj
    formatter.write([1, 2], tmp_path / f"list{formatter.extension}")
    assert formatter.read(tmp_path / f"list{formatter.extension}") == [1, 2]


def test_yaml_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(Exception, match="python/object"):
        YamlFormatter().read(path)


def test_ecsv_round_trip_and_columns(tmp_path: Path) -> None:
    table = Table({"id": [1, 2, 3], "flux": [1.5, 2.5, 3.5] * u.Jy, "name": ["a", "b", "c"]})
    table.meta["source"] = "test"
    path = tmp_path / "t.ecsv"
    EcsvFormatter().write(table, path)
    back = EcsvFormatter().read(path)
    assert back.colnames == ["id", "flux", "name"]
    assert back["flux"].unit == u.Jy
    assert list(back["name"]) == ["a", "b", "c"]
    assert back.meta["source"] == "test"
    assert EcsvFormatter().read(path, "columns") == ["id", "flux", "name"]


@pytest.mark.parametrize(
    ("formatter", "component"),
    [
        (FitsImageFormatter(), "wcs"),
        (YamlFormatter(), "header"),
        (JsonFormatter(), "x"),
        (EcsvFormatter(), "header"),
    ],
)
def test_unsupported_component(tmp_path: Path, formatter: Any, component: str) -> None:
    with pytest.raises(FormatterError) as info:
        formatter.read(tmp_path / "does-not-matter", component)
    assert type(formatter).__name__ in str(info.value)
    assert repr(component) in str(info.value)


@pytest.mark.parametrize(
    ("formatter", "obj"),
    [
        (FitsImageFormatter(), {"not": "an array"}),
        (YamlFormatter(), "a string"),
        (JsonFormatter(), 3),
        (EcsvFormatter(), [1, 2]),
    ],
)
def test_write_refuses_wrong_type(tmp_path: Path, formatter: Any, obj: Any) -> None:
    with pytest.raises(FormatterError, match=type(formatter).__name__):
        formatter.write(obj, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- formatter import paths -------------------------------------------------------------------


def test_formatter_import_path_round_trips() -> None:
    for cls in (FitsImageFormatter, YamlFormatter, JsonFormatter, EcsvFormatter):
        path = formatter_import_path(cls)
        assert path == f"services.datastore.formatters.{cls.__name__}"
        assert load_formatter(path) is cls


def test_formatter_import_path_refuses_local_class() -> None:
    class Local(YamlFormatter):
        pass

    with pytest.raises(FormatterError, match="module level"):
        formatter_import_path(Local)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("FitsImageFormatter", "not an import path"),
        ("no_such_package_xyz.Formatter", "no module named 'no_such_package_xyz'"),
        ("services.datastore.nope.Fmt", "no module named 'services.datastore.nope'"),
        ("services.datastore.formatters.NoSuchFormatter", "has no 'NoSuchFormatter'"),
        ("pathlib.Path", "not a concrete Formatter subclass"),
        ("json.dumps", "not a concrete Formatter subclass"),
        ("services.datastore.formatters.Formatter", "not a concrete Formatter subclass"),
    ],
)
def test_load_formatter_errors(path: str, message: str) -> None:
    with pytest.raises(FormatterError, match=message) as info:
        load_formatter(path)
    assert "\n" not in str(info.value)
    assert repr(path) in str(info.value)


def test_load_formatter_reports_broken_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_instrument_fmt.py").write_text("import not_installed_dependency_q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FormatterError, match="not_installed_dependency_q"):
        load_formatter("broken_instrument_fmt.Whatever")


INSTRUMENT_FORMATTER = textwrap.dedent(
    """
    from pathlib import Path
    from typing import Any

    from services.datastore.formatters import Formatter


    class LinesFormatter(Formatter):
        extension = ".txt"
        components = frozenset({"count"})

        def read(self, path: Path, component: str | None = None) -> Any:
            self.check_component(component)
            lines = path.read_text().splitlines()
            return len(lines) if component == "count" else lines

        def write(self, obj: Any, path: Path) -> None:
            path.write_text("".join(f"{line}\\n" for line in obj))


    class NoExtension(Formatter):
        def read(self, path: Path, component: str | None = None) -> Any:
            return None

        def write(self, obj: Any, path: Path) -> None:
            pass
    """
)


def test_formatter_from_another_package_works_by_import_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ds: FileDatastore
) -> None:
    pkg = tmp_path / "pkgs" / "myinstrument"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "formatters.py").write_text(INSTRUMENT_FORMATTER)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))

    stored = put(
        ds,
        {"b": 1, "a": 2},  # iterating a dict gives its keys: one line each
        "StructuredDataDict",
        formatter="myinstrument.formatters.LinesFormatter",
    )
    assert stored.formatter == "myinstrument.formatters.LinesFormatter"
    assert stored.path.endswith(".txt")
    assert ds.read(stored) == ["b", "a"]
    assert ds.read(stored, "count") == 2
    with pytest.raises(FormatterError, match="extension"):
        load_formatter("myinstrument.formatters.NoExtension")


# --- storage classes --------------------------------------------------------------------------


def test_storage_classes_table() -> None:
    expected = {
        "Image": FitsImageFormatter,
        "StructuredDataDict": YamlFormatter,
        "Json": JsonFormatter,
        "AstropyTable": EcsvFormatter,
    }
    for name, formatter in expected.items():
        sc = get_storage_class(name)
        assert sc.name == name and sc.default_formatter is formatter
    for sc in STORAGE_CLASSES.values():
        # Every declared component must be readable by the default formatter.
        assert set(sc.components) <= sc.default_formatter.components


def test_unknown_storage_class_lists_known() -> None:
    with pytest.raises(StorageClassError, match="ExposureF") as info:
        get_storage_class("ExposureF")
    for name in ("Image", "StructuredDataDict", "Json", "AstropyTable"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("storage_class", "filename", "expected"),
    [
        ("StructuredDataDict", "x.json", JsonFormatter),
        ("StructuredDataDict", "x.yaml", YamlFormatter),
        ("StructuredDataDict", "x.txt", YamlFormatter),
        ("Image", "raw.fits.fz", FitsImageFormatter),
        ("Image", "RAW.FITS", FitsImageFormatter),
        ("Json", "x.yaml", JsonFormatter),  # not a known alternative: default
    ],
)
def test_formatter_for_file(storage_class: str, filename: str, expected: type) -> None:
    assert formatter_for_file(get_storage_class(storage_class), Path(filename)) is expected


# --- path templates ---------------------------------------------------------------------------


def test_default_template_full_data_id() -> None:
    data_id = {**RAW_ID, "day_obs": 20240101, "physical_filter": "HSC-R", "band": "r"}
    path = PathTemplate(DEFAULT_TEMPLATE).render(
        run="HSC/raw/all", dataset_type="raw", data_id=data_id
    )
    assert path == "HSC/raw/all/raw/HSC/20240101/903334/raw_HSC_903334_16_HSC-R_r"


def test_default_template_drops_absent_optional_keys() -> None:
    template = PathTemplate(DEFAULT_TEMPLATE)
    flat_id: dict[str, str | int] = {
        "instrument": "HSC",
        "detector": 16,
        "physical_filter": "HSC-R",
    }
    assert (
        template.render(run="calib", dataset_type="flat", data_id=flat_id)
        == "calib/flat/HSC/flat_HSC_16_HSC-R"
    )
    assert template.render(run="r", dataset_type="skyMap", data_id={}) == "r/skyMap/skyMap"


@pytest.mark.parametrize(
    ("template", "data_id", "expected"),
    [
        ("{run}/{a:?}/{b:?}/{dataset_type}", {}, "R/T"),
        ("{run}/{a:?}/{b:?}/{dataset_type}", {"b": 2}, "R/2/T"),
        ("{run}/{dataset_type}/{a:?}/{b:?}", {}, "R/T"),
        ("{run}/{dataset_type}/{a:?}_{b:?}", {}, "R/T"),
        ("{run}/{dataset_type}/{a:?}_{b:?}", {"b": 2}, "R/T/2"),
        ("{run}/{dataset_type}/{a:?}_{b:?}", {"a": 1}, "R/T/1"),
        ("{run}/{a:?}_{dataset_type}", {}, "R/T"),
        ("{run}/{dataset_type}_{a:?}_{b:?}_{c}", {"c": 3}, "R/T_3"),
        ("{run}/{a:?}_{b:?}_{dataset_type}", {"b": 2}, "R/2_T"),
        ("{a:?}/{run}/{dataset_type}", {}, "R/T"),
        ("{run}/{dataset_type}.v{a:?}", {}, "R/T.v"),
    ],
)
def test_optional_key_separator_rules(
    template: str, data_id: dict[str, int], expected: str
) -> None:
    assert PathTemplate(template).render(run="R", dataset_type="T", data_id=data_id) == expected


def test_required_key_missing() -> None:
    template = PathTemplate("{run}/{dataset_type}/{detector}")
    with pytest.raises(DatastoreError, match="'detector'"):
        template.render(run="r", dataset_type="t", data_id={"instrument": "HSC"})


def test_extra_keys_are_appended_sorted() -> None:
    template = PathTemplate("{run}/{dataset_type}/{dataset_type}_{instrument}")
    path = template.render(
        run="r", dataset_type="coadd", data_id={"instrument": "HSC", "tract": 9813, "patch": 42}
    )
    assert path == "r/coadd/coadd_HSC_patch-42_tract-9813"


def test_rendered_paths_are_unique_per_data_id() -> None:
    template = PathTemplate(DEFAULT_TEMPLATE)
    seen: set[str] = set()
    count = 0
    for run in ("a", "a/b", "b"):
        for dataset_type in ("raw", "calexp"):
            for exposure in (1, 2):
                for detector in (0, 1, 10):
                    for visit in (None, 5):
                        data_id: dict[str, int | str] = {
                            "instrument": "HSC",
                            "exposure": exposure,
                            "detector": detector,
                        }
                        if visit is not None:
                            data_id["visit"] = visit
                        seen.add(
                            template.render(run=run, dataset_type=dataset_type, data_id=data_id)
                        )
                        count += 1
    assert len(seen) == count


def test_sanitize() -> None:
    assert sanitize("HSC-R") == "HSC-R"
    assert sanitize("a b/c\\d:e*") == "a_b_c_d_e_"
    assert sanitize(42) == "42"
    assert sanitize("../x") == ".._x"


@pytest.mark.parametrize("run", ["../../etc", "/etc", "a//b", "a/./b", "..", "a/.."])
def test_escaping_run_is_refused(run: str) -> None:
    with pytest.raises(PathEscapeError):
        PathTemplate(DEFAULT_TEMPLATE).render(run=run, dataset_type="raw", data_id=RAW_ID)


def test_data_id_values_cannot_make_directories() -> None:
    template = PathTemplate(DEFAULT_TEMPLATE)
    path = template.render(run="r", dataset_type="raw", data_id={**RAW_ID, "instrument": "../x"})
    assert path == "r/raw/.._x/903334/raw_.._x_903334_16"
    with pytest.raises(PathEscapeError):
        template.render(run="r", dataset_type="raw", data_id={**RAW_ID, "instrument": ".."})
    with pytest.raises(PathEscapeError):
        template.render(run="r", dataset_type="..", data_id={})


def test_reserved_data_id_keys() -> None:
    with pytest.raises(DatastoreError, match="run"):
        PathTemplate(DEFAULT_TEMPLATE).render(run="r", dataset_type="t", data_id={"run": "x"})


@pytest.mark.parametrize(
    "template",
    [
        "{dataset_type}/{detector}",  # no run
        "{run}/{detector}",  # no dataset_type
        "{run:?}/{dataset_type}",  # run optional
        "/abs/{run}/{dataset_type}",
        "{run}/{dataset_type}/{detector:03d}",
        "{run}/{dataset_type}/{detector!r}",
        "{run}/{dataset_type} {detector}",
        "{run}/{dataset_type}/{detector",
        "{run}/{dataset_type}/{det[0]}",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(ConfigError):
        PathTemplate(template)


def test_per_dataset_type_and_default_templates(root: Path, raw_file: Path) -> None:
    ds = FileDatastore(
        root,
        templates={
            "raw": "{run}/raw/{instrument}/{exposure}_{detector}_{dataset_type}",
            "default": "{run}/{dataset_type}/all",
        },
    )
    stored = ingest(ds, raw_file, "copy")
    assert stored.path == "HSC/raw/all/raw/HSC/903334_16_raw.fits"
    other = put(ds, {"a": 1}, "StructuredDataDict", data_id={"detector": 3})
    assert other.path == "u/someone/run1/thing/all_detector-3.yaml"
    with pytest.raises(ConfigError):
        FileDatastore(root, templates={"raw": "{run}/{detector}"})


# --- ingest: every transfer mode --------------------------------------------------------------


@pytest.mark.parametrize("transfer", TRANSFER_MODES)
def test_ingest_each_transfer_mode(
    ds: FileDatastore, root: Path, raw_file: Path, transfer: str
) -> None:
    original = raw_file.read_bytes()
    checksum = blake2b_of(raw_file)
    stored = ingest(ds, raw_file, transfer)

    assert stored.file_size == len(original)
    assert stored.checksum == checksum
    assert stored.storage_class == "Image"
    assert stored.formatter == "services.datastore.formatters.FitsImageFormatter"
    local = ds.local_path(stored)
    if transfer == "direct":
        assert stored.is_direct and stored.path == raw_file.resolve().as_uri()
        assert local == raw_file.resolve()
        assert files_under(root) == []
    else:
        assert stored.path == "HSC/raw/all/raw/HSC/903334/raw_HSC_903334_16.fits"
        assert local == root / stored.path
        assert local.read_bytes() == original
    assert raw_file.exists() == (transfer != "move")
    if transfer == "copy":
        assert not local.is_symlink() and local.stat().st_ino != raw_file.stat().st_ino
    if transfer == "hardlink":
        assert local.stat().st_ino == raw_file.stat().st_ino
    if transfer == "symlink":
        assert local.is_symlink() and local.resolve() == raw_file.resolve()

    assert ds.uri(stored) == local.as_uri()
    np.testing.assert_array_equal(ds.read(stored), np.arange(12).reshape(3, 4))
    assert ds.read(stored, "metadata")["EXPID"] == 903334
    ds.verify(stored)
    assert not [p for p in files_under(root) if ".tmp-" in p]


@pytest.mark.parametrize("transfer", TRANSFER_MODES)
def test_rollback_undoes_each_transfer_mode(
    ds: FileDatastore, root: Path, raw_file: Path, transfer: str
) -> None:
    original = raw_file.read_bytes()
    with pytest.raises(BoomError), ds.transaction() as txn:
        stored = txn.ingest(
            raw_file,
            dataset_id=uuid.uuid4(),
            dataset_type="raw",
            run="HSC/raw/all",
            data_id=RAW_ID,
            storage_class="Image",
            formatter=None,
            transfer=transfer,
        )
        assert ds.local_path(stored).exists()
        raise BoomError
    # The file is back where it started (moved back for "move") and the datastore is empty,
    # including the directories the ingest created.
    assert raw_file.read_bytes() == original
    assert not raw_file.is_symlink()
    assert files_under(root) == []


def test_rollback_undoes_several_operations_in_reverse(
    ds: FileDatastore, root: Path, raw_file: Path, tmp_path: Path
) -> None:
    second = tmp_path / "incoming" / "second.fits"
    second.write_bytes(raw_file.read_bytes())
    with pytest.raises(BoomError), ds.transaction() as txn:
        common: dict[str, Any] = {"dataset_type": "raw", "run": "r", "storage_class": "Image"}
        txn.ingest(raw_file, dataset_id=uuid.uuid4(), data_id=RAW_ID, transfer="move", **common)
        txn.ingest(
            second,
            dataset_id=uuid.uuid4(),
            data_id={**RAW_ID, "detector": 17},
            transfer="copy",
            **common,
        )
        txn.put(
            {"x": 1},
            dataset_id=uuid.uuid4(),
            dataset_type="config",
            run="r",
            data_id={},
            storage_class="StructuredDataDict",
        )
        assert len([p for p in files_under(root) if p.endswith((".fits", ".yaml"))]) == 3
        raise BoomError
    assert raw_file.exists() and second.exists()
    assert files_under(root) == []


def test_rollback_keeps_directories_that_already_existed(
    ds: FileDatastore, root: Path, raw_file: Path
) -> None:
    ingest(ds, raw_file, "copy", data_id={**RAW_ID, "detector": 1})
    before = files_under(root)
    with pytest.raises(BoomError), ds.transaction() as txn:
        txn.ingest(
            raw_file,
            dataset_id=uuid.uuid4(),
            dataset_type="raw",
            run="HSC/raw/all",
            data_id=RAW_ID,
            storage_class="Image",
            transfer="copy",
        )
        raise BoomError
    assert files_under(root) == before


def test_commit_keeps_files(ds: FileDatastore, raw_file: Path) -> None:
    stored = ingest(ds, raw_file, "copy")
    assert ds.local_path(stored).is_file()


def test_compression_suffix_is_kept(ds: FileDatastore, raw_file: Path, tmp_path: Path) -> None:
    gz = tmp_path / "incoming" / "raw.fits.gz"
    gz.write_bytes(gzip.compress(raw_file.read_bytes()))
    stored = ingest(ds, gz, "copy")
    assert stored.path.endswith("raw_HSC_903334_16.fits.gz")
    np.testing.assert_array_equal(ds.read(stored), np.arange(12).reshape(3, 4))


def test_explicit_formatter_and_alternative_by_extension(ds: FileDatastore, tmp_path: Path) -> None:
    source = tmp_path / "cfg.json"
    source.write_text('{"a": [1, 2]}')
    by_extension = ingest(
        ds, source, "copy", dataset_type="cfg", storage_class="StructuredDataDict", data_id={}
    )
    assert by_extension.formatter.endswith(".JsonFormatter")
    assert by_extension.path.endswith(".json")
    assert ds.read(by_extension) == {"a": [1, 2]}
    explicit = ingest(
        ds,
        source,
        "copy",
        dataset_type="cfg2",
        storage_class="StructuredDataDict",
        data_id={},
        formatter="services.datastore.formatters.YamlFormatter",  # JSON is valid YAML
    )
    assert explicit.path.endswith(".yaml")
    assert ds.read(explicit) == {"a": [1, 2]}


# --- ingest refusals --------------------------------------------------------------------------


def test_ingest_missing_source(ds: FileDatastore, tmp_path: Path) -> None:
    missing = tmp_path / "nope.fits"
    with pytest.raises(TransferError, match=r"nope\.fits"):
        ingest(ds, missing, "copy")
    with pytest.raises(TransferError, match="not a regular file"):
        ingest(ds, tmp_path, "copy")


def test_ingest_unknown_transfer_mode(ds: FileDatastore, raw_file: Path) -> None:
    with pytest.raises(TransferError, match="'teleport'") as info:
        ingest(ds, raw_file, "teleport")
    for mode in TRANSFER_MODES:
        assert mode in str(info.value)


def test_ingest_unknown_storage_class_and_formatter(ds: FileDatastore, raw_file: Path) -> None:
    with pytest.raises(StorageClassError):
        ingest(ds, raw_file, "copy", storage_class="Nope")
    with pytest.raises(FormatterError):
        ingest(ds, raw_file, "copy", formatter="nowhere.Fmt")


@pytest.mark.parametrize("transfer", LINKED_MODES)
def test_ingest_same_content_is_idempotent(
    ds: FileDatastore, raw_file: Path, tmp_path: Path, transfer: str
) -> None:
    first = ingest(ds, raw_file, "copy")
    again_source = tmp_path / "again.fits"
    again_source.write_bytes(raw_file.read_bytes())
    again = ingest(ds, again_source, transfer, dataset_id=first.dataset_id)
    assert again == first
    assert again_source.exists()  # nothing was transferred, not even for "move"
    # Rolling back an idempotent ingest must not delete the file that was already there.
    with pytest.raises(BoomError), ds.transaction() as txn:
        txn.ingest(
            again_source,
            dataset_id=uuid.uuid4(),
            dataset_type="raw",
            run="HSC/raw/all",
            data_id=RAW_ID,
            storage_class="Image",
            transfer=transfer,
        )
        raise BoomError
    ds.verify(first)


@pytest.mark.parametrize("transfer", LINKED_MODES)
def test_ingest_refuses_different_content_at_destination(
    ds: FileDatastore, raw_file: Path, tmp_path: Path, transfer: str
) -> None:
    first = ingest(ds, raw_file, "copy")
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(data=np.zeros((2, 2))).writeto(other)
    dest = ds.local_path(first)
    with pytest.raises(DatastoreError, match="already exists with different content") as info:
        ingest(ds, other, transfer)
    assert str(dest) in str(info.value)
    ds.verify(first)  # untouched, also after the failed transaction rolled back
    assert other.exists()


def test_ingest_refuses_escaping_paths(ds: FileDatastore, root: Path, raw_file: Path) -> None:
    with pytest.raises(PathEscapeError):
        ingest(ds, raw_file, "copy", run="../../etc")
    with pytest.raises(PathEscapeError):
        ingest(ds, raw_file, "copy", run="/etc")
    stored = ingest(ds, raw_file, "copy", data_id={**RAW_ID, "instrument": "../x"})
    assert ds.local_path(stored).resolve().is_relative_to(root)
    assert files_under(root)[0] == "HSC"  # still inside the run directory


def test_ingest_refuses_symlinked_directory_leaving_root(
    ds: FileDatastore, root: Path, raw_file: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathEscapeError):
        ingest(ds, raw_file, "copy", run="evil")
    assert files_under(outside) == []


def test_stored_file_with_escaping_path_is_refused(ds: FileDatastore) -> None:
    for bad in ("../outside.yaml", "/etc/passwd", "a/../../b.yaml", ""):
        stored = StoredFile(uuid.uuid4(), bad, formatter_import_path(YamlFormatter), "x", 0, "")
        with pytest.raises(PathEscapeError):
            ds.read(stored)


def test_finished_transaction_cannot_be_used(ds: FileDatastore, raw_file: Path) -> None:
    with ds.transaction() as txn:
        pass
    with pytest.raises(DatastoreError, match="already finished"):
        txn.ingest(
            raw_file,
            dataset_id=uuid.uuid4(),
            dataset_type="raw",
            run="r",
            data_id=RAW_ID,
            storage_class="Image",
            transfer="copy",
        )


# --- put --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage_class", "obj", "extension"),
    [
        ("Image", np.ones((3, 2), dtype=np.float64), ".fits"),
        ("StructuredDataDict", {"gain": 1.5, "amps": ["a", "b"]}, ".yaml"),
        ("Json", {"gain": 1.5, "amps": ["a", "b"]}, ".json"),
        ("AstropyTable", Table({"x": [1, 2], "y": [0.5, 1.5]}), ".ecsv"),
    ],
)
def test_put_and_read_each_storage_class(
    ds: FileDatastore, root: Path, storage_class: str, obj: Any, extension: str
) -> None:
    stored = put(ds, obj, storage_class)
    assert stored.path == f"u/someone/run1/thing/HSC/thing_HSC_1{extension}"
    assert stored.storage_class == storage_class
    local = root / stored.path
    assert stored.file_size == local.stat().st_size
    assert stored.checksum == blake2b_of(local)
    back = ds.read(stored)
    if isinstance(obj, np.ndarray):
        np.testing.assert_array_equal(back, obj)
    elif isinstance(obj, Table):
        assert back.colnames == obj.colnames and list(back["y"]) == list(obj["y"])
    else:
        assert back == obj
    assert not [p for p in files_under(root) if ".tmp-" in p]


def test_put_rollback_and_identical_reput(ds: FileDatastore, root: Path) -> None:
    with pytest.raises(BoomError), ds.transaction() as txn:
        txn.put(
            {"a": 1},
            dataset_id=uuid.uuid4(),
            dataset_type="cfg",
            run="r",
            data_id={},
            storage_class="Json",
        )
        raise BoomError
    assert files_under(root) == []
    first = put(ds, {"a": 1}, "Json")
    assert put(ds, {"a": 1}, "Json", dataset_id=first.dataset_id) == first
    with pytest.raises(DatastoreError, match="different content"):
        put(ds, {"a": 2}, "Json")
    assert ds.read(first) == {"a": 1}


def test_put_wrong_type_leaves_nothing(ds: FileDatastore, root: Path) -> None:
    with pytest.raises(FormatterError, match="FitsImageFormatter"):
        put(ds, {"not": "an image"}, "Image")
    assert files_under(root) == []


def test_put_unserialisable_value_is_formatter_error(ds: FileDatastore, root: Path) -> None:
    with pytest.raises(FormatterError, match="JsonFormatter could not write"):
        put(ds, {"when": object()}, "Json")
    assert files_under(root) == []


# --- read, verify, remove ---------------------------------------------------------------------


def test_read_components_through_datastore(ds: FileDatastore) -> None:
    table = put(ds, Table({"a": [1], "b": [2]}), "AstropyTable")
    assert ds.read(table, "columns") == ["a", "b"]
    with pytest.raises(FormatterError, match="'wcs'"):
        ds.read(table, "wcs")


def test_read_missing_file(ds: FileDatastore, root: Path) -> None:
    stored = put(ds, {"a": 1}, "Json")
    (root / stored.path).unlink()
    with pytest.raises(DatastoreError, match="missing"):
        ds.read(stored)
    with pytest.raises(DatastoreError, match="missing"):
        ds.verify(stored)


def test_read_corrupt_file_is_formatter_error(ds: FileDatastore, root: Path) -> None:
    stored = put(ds, {"a": 1}, "Json")
    (root / stored.path).write_text("{not json")
    with pytest.raises(FormatterError, match="JsonFormatter could not read"):
        ds.read(stored)


def test_verify_catches_modified_and_truncated_files(
    ds: FileDatastore, root: Path, raw_file: Path
) -> None:
    stored = ingest(ds, raw_file, "copy")
    local = root / stored.path
    ds.verify(stored)
    data = bytearray(local.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    local.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum"):
        ds.verify(stored)
    local.write_bytes(bytes(data[:-10]))
    with pytest.raises(ChecksumError, match="bytes"):
        ds.verify(stored)


def test_verify_catches_change_to_direct_file(ds: FileDatastore, raw_file: Path) -> None:
    stored = ingest(ds, raw_file, "direct")
    with raw_file.open("ab") as stream:
        stream.write(b"x")
    with pytest.raises(ChecksumError):
        ds.verify(stored)


def test_remove_deletes_file_and_empty_directories(
    ds: FileDatastore, root: Path, raw_file: Path
) -> None:
    stored = ingest(ds, raw_file, "symlink")
    ds.remove(stored)
    assert files_under(root) == []
    assert raw_file.exists()  # a symlink's target is not ours to delete
    ds.remove(stored)  # already gone: fine


def test_remove_never_deletes_direct_files(ds: FileDatastore, raw_file: Path) -> None:
    stored = ingest(ds, raw_file, "direct")
    ds.remove(stored)
    assert raw_file.exists()


def test_transaction_remove_waits_for_commit(ds: FileDatastore, root: Path) -> None:
    stored = put(ds, {"a": 1}, "Json")
    with pytest.raises(BoomError), ds.transaction() as txn:
        txn.remove(stored)
        assert (root / stored.path).exists()
        raise BoomError
    assert (root / stored.path).exists()
    with ds.transaction() as txn:
        txn.remove(stored)
        assert (root / stored.path).exists()
    assert files_under(root) == []


def test_file_uri_round_trip_with_special_characters(ds: FileDatastore, tmp_path: Path) -> None:
    odd = tmp_path / "dir with space %" / "cfg #1.yaml"
    odd.parent.mkdir()
    odd.write_text("a: 1\n")
    stored = ingest(
        ds, odd, "direct", dataset_type="cfg", storage_class="StructuredDataDict", data_id={}
    )
    assert ds.local_path(stored) == odd.resolve()
    assert ds.read(stored) == {"a": 1}


def _cross_device(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))


def test_move_across_filesystems_copies_and_rolls_back(
    ds: FileDatastore, root: Path, raw_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.rename fails across filesystems; the move must fall back to copy + delete, both
    # forwards and when undoing.
    monkeypatch.setattr("services.datastore.file_ops.os.rename", _cross_device)
    original = raw_file.read_bytes()
    stored = ingest(ds, raw_file, "move")
    assert not raw_file.exists()
    assert (root / stored.path).read_bytes() == original
    raw_file.write_bytes(original)
    with pytest.raises(BoomError), ds.transaction() as txn:
        txn.ingest(
            raw_file,
            dataset_id=uuid.uuid4(),
            dataset_type="raw",
            run="other",
            data_id=RAW_ID,
            storage_class="Image",
            transfer="move",
        )
        assert not raw_file.exists()
        raise BoomError
    assert raw_file.read_bytes() == original
    assert not (root / "other").exists()


def test_hardlink_across_filesystems_is_a_clear_transfer_error(
    ds: FileDatastore, root: Path, raw_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.datastore.transaction.os.link", _cross_device)
    with pytest.raises(TransferError, match="different filesystems"):
        ingest(ds, raw_file, "hardlink")
    assert files_under(root) == []


def test_directory_blocked_by_a_file(ds: FileDatastore, root: Path, raw_file: Path) -> None:
    root.mkdir()
    (root / "blocked").write_text("a file where the run directory should be")
    with pytest.raises(DatastoreError, match="cannot create directory"):
        ingest(ds, raw_file, "copy", run="blocked")
    assert files_under(root) == ["blocked"]
