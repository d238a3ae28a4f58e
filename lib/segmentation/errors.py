"""The product's exception hierarchy: every failure a user can cause maps to one of these; `one_line`
says what any other failure (a Java exception from Spark, a library's error) was, in one line."""

from __future__ import annotations

import re


class SegmentationError(Exception):
    """Base of every error the product raises on purpose; the CLI prints it as one line."""


class ConfigError(SegmentationError):
    """Invalid configuration: an unknown key, a wrong type or an impossible value."""


class DataQualityError(SegmentationError):
    """The data breaks an invariant the stage guarantees (e.g. ingest does not reconcile)."""


class InputError(SegmentationError):
    """The input as a whole cannot be read (not a single record of the expected format, a corrupt
    archive, a file that is not what input.format says); names the files."""


class StorageError(SegmentationError):
    """The table layer cannot read, write or commit a table."""


class StageError(SegmentationError):
    """A stage cannot run, e.g. because an upstream table is missing."""


class ConcurrentWriteError(StorageError):
    """Another writer committed to the table first and this write was not committed (nothing of it
    landed); running it again reads the other writer's commit."""


_READ_FILE = re.compile(
    r"(?:reading file|file|path)\s+[`'\"]?((?:[a-z][a-z0-9+.-]*:)?/[^\s`'\"]+?)[`'\".]?(?:\s|$)"
)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """`Type: message` in one line. For a Java exception (py4j), the root cause of its chain (what
    actually failed, e.g. `IOException: not a gzip file`) and the first file or path the chain
    names, rather than py4j's `An error occurred while calling o83.json.`"""
    chain = _java_chain(exc)
    if chain:
        root_class, root_message = chain[-1]
        text = f"{root_class.rsplit('.', 1)[-1]}: {_first_line(root_message)}"
        path = next((m.group(1) for _, message in chain if (m := _READ_FILE.search(message))), None)
        if path and path not in text:
            text += f" (file {path})"
        return text[:limit]
    return f"{type(exc).__name__}: {_first_line(str(exc))}"[:limit]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def _java_chain(exc: BaseException) -> list[tuple[str, str]]:
    """(class name, message) of a py4j Java exception and its causes, outermost first; empty for
    other exceptions or when the JVM cannot be asked (it may be gone)."""
    java = getattr(exc, "java_exception", None)
    chain: list[tuple[str, str]] = []
    try:
        while java is not None and len(chain) < 32:
            chain.append((str(java.getClass().getName()), str(java.getMessage() or "")))
            java = java.getCause()
    except Exception:  # noqa: BLE001 - a dead gateway: fall back to what py4j said
        return chain
    return chain
