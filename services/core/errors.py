"""Every error a user of obsbus can see, in one module.

Each error's message is one line saying what was wrong and what to do. Each type carries a
stable ``code`` (used as the reason code in ingest outcomes and bus events), so callers
classify errors by type or code and never by matching message text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class ObsbusError(Exception):
    """Base of all obsbus errors; ``str(err)`` is the one-line message for the user."""

    code = "error"


class OutageError(ObsbusError):
    """Something every message needs is unavailable (the database, space in the datastore).

    It is not the fault of the message at hand and it passes: a service reads the message
    again once it is back, instead of failing it or dead-lettering it as poison.
    """

    code = "outage"


# --- repository and configuration ------------------------------------------------------------


class RepoError(ObsbusError):
    code = "repo"


class RepoNotFoundError(RepoError):
    code = "repo_not_found"


class RepoExistsError(RepoError):
    code = "repo_exists"


class ConfigError(ObsbusError):
    code = "config"


class SchemaVersionError(RepoError):
    code = "schema_version"


class ReadOnlyError(RepoError):
    """A write was asked of a repository opened read-only (as the HTTP API opens it)."""

    code = "read_only"


class DatabaseError(ObsbusError):
    """The database refused or failed an operation that obsbus did not anticipate."""

    code = "database"


class DatabaseUnavailableError(DatabaseError, OutageError):
    """The database could not be reached or was busy: trying again later may work."""

    code = "database_unavailable"


# --- dimensions and data IDs ------------------------------------------------------------------


class DimensionError(ObsbusError):
    code = "dimension"


class UnknownDimensionError(DimensionError):
    code = "unknown_dimension"


class DataIdError(DimensionError):
    code = "bad_data_id"


class UnregisteredDataIdError(DataIdError):
    """A data ID value has no dimension record (e.g. an unknown detector).

    ``index`` is the position of the offending data ID among those checked together, so a
    caller can name its own input (e.g. the row of an ingest table). Same ``code`` as
    DataIdError: it is a bad data ID.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DimensionRecordError(DimensionError):
    """A dimension record is malformed (missing or mistyped fields)."""

    code = "bad_record"


class RecordNotFoundError(DimensionError):
    code = "record_not_found"


class RecordExistsError(DimensionError):
    code = "record_exists"


class RecordConflictError(DimensionError):
    """A record differs from the one already registered under the same key."""

    code = "record_conflict"

    def __init__(
        self, element: str, key: Mapping[str, Any], diffs: Mapping[str, tuple[Any, Any]]
    ) -> None:
        self.element = element
        self.key = dict(key)
        self.diffs = dict(diffs)
        key_text = ", ".join(f"{k}={v!r}" for k, v in self.key.items())
        diff_text = "; ".join(f"{f}: {old!r} -> {new!r}" for f, (old, new) in self.diffs.items())
        super().__init__(
            f"{element} record {key_text} conflicts with the registered one ({diff_text}); "
            "nothing was written: use an explicit update with a reason to change it"
        )


# --- dataset types, datasets and collections --------------------------------------------------


class DatasetTypeError(ObsbusError):
    code = "dataset_type"


class MissingDatasetTypeError(DatasetTypeError):
    code = "unknown_dataset_type"


class DatasetTypeConflictError(DatasetTypeError):
    code = "dataset_type_conflict"


class NotACalibrationError(DatasetTypeError):
    code = "not_a_calibration"


class DatasetError(ObsbusError):
    code = "dataset"


class DatasetNotFoundError(DatasetError):
    code = "dataset_not_found"


class DatasetConflictError(DatasetError):
    code = "dataset_conflict"


class CollectionError(ObsbusError):
    code = "collection"


class MissingCollectionError(CollectionError):
    code = "unknown_collection"


class CollectionExistsError(CollectionError):
    code = "collection_exists"


class CollectionTypeError(CollectionError):
    code = "collection_type"


class ChainCycleError(CollectionError):
    code = "chain_cycle"


class CollectionFrozenError(CollectionError):
    code = "collection_frozen"


# --- calibrations -----------------------------------------------------------------------------


class CalibrationError(ObsbusError):
    code = "calibration"


class CalibrationOverlapError(CalibrationError):
    """Certifying would overlap validity ranges already in the collection."""

    code = "validity_overlap"

    def __init__(self, collection: str, dataset_type: str, conflicts: Sequence[str]) -> None:
        self.collection = collection
        self.dataset_type = dataset_type
        self.conflicts = list(conflicts)
        super().__init__(
            f"cannot certify {dataset_type} into {collection}: overlaps "
            + "; ".join(self.conflicts)
            + " (decertify those ranges first or choose another validity range)"
        )


class CalibrationAmbiguityError(CalibrationError):
    """A lookup time range matches more than one validity range."""

    code = "ambiguous_calibration"


class BlessingRejectedError(CalibrationError):
    """The calibration service refused a blessing request (the message says why)."""

    code = "blessing_rejected"


class AdjustmentMismatchError(CalibrationError):
    """A declared change to a certified range (a suite's adjustment) matches no live range."""

    code = "adjustment_mismatch"


class TimespanError(ObsbusError):
    code = "bad_timespan"


# --- datastore --------------------------------------------------------------------------------


class DatastoreError(ObsbusError):
    code = "datastore"


class TransferError(DatastoreError):
    code = "transfer"


class PathEscapeError(DatastoreError):
    code = "path_escape"


class FormatterError(DatastoreError):
    code = "formatter"


class ComponentParameterError(FormatterError):
    """A component needs a parameter to pick its part out of the dataset (camera.detector
    needs the detector) and none was given."""

    code = "component_parameter"


class CameraDetectorNotFoundError(DatastoreError):
    """The camera version that applies has no such detector."""

    code = "camera_detector_not_found"


class StorageClassError(DatastoreError):
    code = "storage_class"


class DatastoreFullError(DatastoreError, OutageError):
    """The datastore's filesystem is full or over quota (ENOSPC, EDQUOT): nothing was written.

    ``then`` is what to do once space is back; callers that know better (raw ingest) say it
    with ``then_do``.
    """

    code = "datastore_full"

    def __init__(self, root: Path, target: Path, detail: str, then: str = "then try again") -> None:
        self.root, self.target, self.detail = Path(root), Path(target), detail
        super().__init__(
            f"datastore full: cannot write {target} ({detail}); free space on {root}, {then}"
        )

    def then_do(self, then: str) -> DatastoreFullError:
        """The same error, saying ``then`` as the step after freeing space."""
        return DatastoreFullError(self.root, self.target, self.detail, then)


class ChecksumError(DatastoreError):
    code = "checksum"


class FileConflictError(DatastoreError):
    """A different file was already stored for the same dataset."""

    code = "file_conflict"


# --- queries and input ------------------------------------------------------------------------


class ExpressionError(ObsbusError):
    """A --where expression could not be parsed or refers to something unknown."""

    code = "bad_expression"


class InputError(ObsbusError):
    """A user-supplied file or argument is malformed (e.g. an ingest table)."""

    code = "bad_input"


# --- instruments ------------------------------------------------------------------------------


class InstrumentError(ObsbusError):
    code = "instrument"


class UnknownInstrumentError(InstrumentError):
    code = "no_such_instrument"


# --- raw ingest (each is one failure reason of one file) --------------------------------------


class RawFileError(ObsbusError):
    code = "bad_raw"


class NotFitsError(RawFileError):
    code = "not_fits"


class TruncatedFileError(RawFileError):
    code = "truncated"


class NoTranslatorError(RawFileError):
    code = "no_translator"


class IncompleteHeaderError(RawFileError):
    code = "incomplete_header"


class UnreadableCardError(RawFileError):
    code = "unreadable_card"


class UnknownFilterError(RawFileError):
    code = "unknown_filter"


class UnknownDetectorError(RawFileError):
    code = "unknown_detector"


class InstrumentNotRegisteredError(RawFileError):
    code = "instrument_not_registered"


# --- the bus ------------------------------------------------------------------------------------


class BusError(ObsbusError):
    """Kafka could not be reached or refused something."""

    code = "bus"


class RegistryServedError(ObsbusError):
    """A command that writes the registry directly, while a registry service owns it."""

    code = "registry_served"


class CommandRejectedError(ObsbusError):
    """The registry service refused a command sent to it; ``code`` is the reason it gave
    (the code of the error it raised), the message its one line."""

    code = "command_rejected"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.code = reason


class NoAnswerError(BusError):
    """A message was sent but its answer did not come in time (it may still be acted on)."""

    code = "no_answer"


class UndecodableMessageError(BusError):
    """A message's bytes are not a single-object encoded Avro record obsbus knows."""

    code = "undecodable"


class UnencodableMessageError(BusError):
    """A value does not fit its message schema (names the record and the field)."""

    code = "unencodable"


class UnknownSchemaError(BusError):
    """No message schema has that record name, version or fingerprint."""

    code = "unknown_schema"


class SchemaFileError(BusError):
    """A schema file in the ``schemas`` package is malformed or misnamed."""

    code = "bad_schema_file"
