"""File datastore: formatters, storage classes, path templates and the datastore itself.

Pure filesystem logic; the registry records each ``StoredFile`` and opens a datastore
``transaction()`` around its database transaction so files and rows stay consistent.
"""

from services.datastore.datastore import FileDatastore
from services.datastore.formatters import (
    EcsvFormatter,
    FitsImageFormatter,
    Formatter,
    JsonFormatter,
    YamlFormatter,
    formatter_import_path,
    load_formatter,
)
from services.datastore.storage_classes import (
    STORAGE_CLASSES,
    StorageClass,
    formatter_for_file,
    get_storage_class,
)
from services.datastore.stored import StoredFile, file_checksum
from services.datastore.templates import DEFAULT_TEMPLATE, PathTemplate, sanitize
from services.datastore.transaction import TRANSFER_MODES, DatastoreTransaction

__all__ = [
    "DEFAULT_TEMPLATE",
    "STORAGE_CLASSES",
    "TRANSFER_MODES",
    "DatastoreTransaction",
    "EcsvFormatter",
    "FileDatastore",
    "FitsImageFormatter",
    "Formatter",
    "JsonFormatter",
    "PathTemplate",
    "StorageClass",
    "StoredFile",
    "YamlFormatter",
    "file_checksum",
    "formatter_for_file",
    "formatter_import_path",
    "get_storage_class",
    "load_formatter",
    "sanitize",
]
