"""The product's exception hierarchy: every failure a user can cause maps to one of these."""


class SegmentationError(Exception):
    """Base of every error the product raises on purpose; the CLI prints it as one line."""


class ConfigError(SegmentationError):
    """Invalid configuration: an unknown key, a wrong type or an impossible value."""


class DataQualityError(SegmentationError):
    """The data breaks an invariant the stage guarantees (e.g. ingest does not reconcile)."""


class StorageError(SegmentationError):
    """The table layer cannot read, write or commit a table."""


class StageError(SegmentationError):
    """A stage cannot run, e.g. because an upstream table is missing."""


class ConcurrentWriteError(StorageError):
    """Another writer committed to the table first and this write was not committed (nothing of it
    landed); running it again reads the other writer's commit."""
