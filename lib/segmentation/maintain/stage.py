"""Stage `maintain`: the nightly upkeep Delta tables need, on every product table (or
`maintain.tables`): rewrite files that carry deletion vectors (written by other tools), compact small
files (OPTIMIZE: a commit that changes no row) and delete the files no version younger than
`maintain.vacuum_retain_hours` needs (VACUUM; time travel to older versions ends there).

Safe to run beside readers: compaction is an ordinary commit, and the retention (a week by default, as
Delta's own check) keeps every file a running job or recent time-travel query can still read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from segmentation.stage import StageContext, StageResult, summary_field
from segmentation.tables import ALL_TABLES

log = logging.getLogger(__name__)


@dataclass
class MaintainResult(StageResult):
    engine: str = summary_field("")
    files_before: int = summary_field(0)
    files_after: int = summary_field(0)
    tables: dict[str, dict] = field(
        default_factory=dict
    )  # per table: files, rows and version, before and after


def run(ctx: StageContext) -> MaintainResult:
    settings, store = ctx.cfg.maintain, ctx.store
    names = [n for n in (settings.tables or ALL_TABLES) if store.exists(n)]
    per_table: dict[str, dict] = {}
    for name in names:
        figures: dict = {}
        if settings.purge_deletion_vectors:
            ctx.describe(f"maintain {name}: purge deletion vectors")
            figures["files_with_deletion_vectors"] = store.purge_deletion_vectors(name)
        before = store.snapshot(name)
        figures.update(files_before=len(before.files), rows_before=before.rows)
        if settings.optimize:
            ctx.describe(f"maintain {name}: optimize")
            figures.update(store.optimize(name))
        if settings.vacuum_retain_hours is not None:
            ctx.describe(f"maintain {name}: vacuum")
            figures["files_vacuumed"] = store.vacuum(
                name, settings.vacuum_retain_hours, enforce_retention=not settings.allow_short_retention
            )
        after = store.snapshot(name)
        figures.update(files_after=len(after.files), rows_after=after.rows, version=after.version)
        log.info("maintain %s: %s", name, figures)
        per_table[name] = figures
    # Rows in and out: every table's rows from its log's statistics, before and after (equal: upkeep
    # changes files, never rows).
    return MaintainResult(
        rows_in=sum(f["rows_before"] or 0 for f in per_table.values()),
        rows_out=sum(f["rows_after"] or 0 for f in per_table.values()),
        tables=per_table,
        engine=store.engine_name,
        files_before=sum(f["files_before"] for f in per_table.values()),
        files_after=sum(f["files_after"] for f in per_table.values()),
    )
