"""Feature scaling: log1p for heavy tails, standardization, clipping, optionally the activity features
net of volume; statistics saved as JSON.

The statistics are computed once per snapshot (one aggregation, a single small row to the driver)
and stored beside the table version, so the model and the assign stage scale new users identically.

Net of volume (`features.partial_out_volume`): the activity features (active days, sessions, tenure,
gaps, ...) all grow with the number of events, so a heavy-tailed event count enters every distance
once per activity feature. Partialled out, each of them enters as its scaled value minus its
correlation with scaled `n_events` times scaled `n_events` (the least-squares residual of two
standardized variables; the correlation is taken before the clip, which binds rarely), and `n_events`
itself stays: volume counts once, and what the activity features say beyond volume (a burst of
sessions against steady visits at the same count) is kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from segmentation.artifacts import atomic_write_text
from segmentation.errors import StageError

log = logging.getLogger(__name__)

VOLUME = "n_events"  # what features.partial_out_volume takes out of the other activity features
# features.partial_out_spend: the monetary features that are totals over a user's purchases, and so
# grow with activity (purchase_mean, a per-purchase figure, does not)
SPEND_TOTALS = ("purchase_count", "purchase_total", "return_total", "quantity_total")


@dataclass(frozen=True)
class Scaler:
    feature_names: list[str]  # kept features, in the order of the `features` array
    log1p: list[bool]
    mean: list[float]
    std: list[float]
    clip_std: float
    dropped_constant: list[str]
    run_id: str
    vocabulary: dict = field(default_factory=dict)  # categories and devices behind the mix features
    # the rules that chose the snapshot's users and events (features.lookback_days, min_events,
    # timezone): `assign` applies these, not whatever the config says later
    rules: dict = field(default_factory=dict)
    # feature -> its correlation with `volume`: these enter net of volume (features.partial_out_volume)
    partial_out: dict = field(default_factory=dict)
    volume: str = VOLUME

    def transform(self) -> Column:
        """The scaled `array<float>` column, from the raw feature columns."""
        scaled = {}
        for name, use_log, mean, std in zip(self.feature_names, self.log1p, self.mean, self.std, strict=True):
            z = (_transformed(name, use_log) - F.lit(mean)) / F.lit(std)
            scaled[name] = F.least(F.greatest(z, F.lit(-self.clip_std)), F.lit(self.clip_std))
        parts = [
            z - F.lit(self.partial_out[name]) * scaled[self.volume] if name in self.partial_out else z
            for name, z in scaled.items()
        ]
        return F.array(*[p.cast("float") for p in parts])

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2))

    @staticmethod
    def load(path: Path) -> Scaler:
        if not path.is_file():
            raise StageError(f"scaling statistics not found at {path}: run the features stage first")
        return Scaler(**json.loads(path.read_text()))


def _transformed(name: str, use_log: bool) -> Column:
    """A raw feature column before standardization: log1p of its non-negative part where chosen."""
    return F.log1p(F.greatest(F.col(name), F.lit(0.0))) if use_log else F.col(name)


def fit_scaler(
    users: DataFrame,
    names: list[str],
    log1p: list[bool],
    clip_std: float,
    run_id: str,
    vocabulary: dict | None = None,
    partial_out: list[str] | None = None,
) -> Scaler:
    """Mean and (population) standard deviation of each transformed feature; constants are dropped.
    Each feature of `partial_out` (when VOLUME is among `names`) also gets its correlation with VOLUME,
    both transformed, and enters `transform` net of volume."""
    exprs = []
    transformed = {name: _transformed(name, use_log) for name, use_log in zip(names, log1p, strict=True)}
    for name, x in transformed.items():
        exprs += [F.avg(x).alias(f"m_{name}"), F.stddev_pop(x).alias(f"s_{name}")]
    netted = [name for name in partial_out or [] if name in transformed and name != VOLUME]
    if VOLUME in transformed:
        # covariances, divided by the standard deviations below: Spark's corr raises DIVIDE_BY_ZERO under
        # ANSI mode (Spark 4's default) where a feature or the volume is constant over the users
        exprs += [F.covar_pop(transformed[name], transformed[VOLUME]).alias(f"c_{name}") for name in netted]
    stats = users.agg(*exprs).head()
    if stats is None or stats[f"m_{names[0]}"] is None:
        raise StageError("no users to compute feature statistics from")
    kept, kept_log, means, stds, dropped = [], [], [], [], []
    for name, use_log in zip(names, log1p, strict=True):
        std = stats[f"s_{name}"] or 0.0
        if std < 1e-9:
            dropped.append(name)
            continue
        kept.append(name)
        kept_log.append(use_log)
        means.append(float(stats[f"m_{name}"]))
        stds.append(float(std))
    if dropped:
        log.info("features: dropped constant features %s", dropped)
    if not kept:
        raise StageError("every feature is constant over the users: nothing to segment on")
    # a constant volume or feature is dropped above: it has no correlation to take out
    deviation = dict(zip(kept, stds, strict=True))
    correlations = (
        {
            name: float(stats[f"c_{name}"]) / (deviation[name] * deviation[VOLUME])
            for name in netted
            if name in deviation and stats[f"c_{name}"] is not None
        }
        if VOLUME in deviation
        else {}
    )
    if correlations:
        log.info(
            "features: net of volume (%s): %s",
            VOLUME,
            ", ".join(f"{name} (r={r:.2f})" for name, r in correlations.items()),
        )
    return Scaler(
        kept, kept_log, means, stds, clip_std, dropped, run_id, vocabulary or {}, partial_out=correlations
    )
