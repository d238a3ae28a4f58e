"""Typed configuration: defaults, YAML overlays and `--set key=value`, validated at start-up.

Order (DESIGN.md §3): the defaults below, then the package's `resources/base.yaml` (which states every
default with a comment; a test keeps the two equal), then each `--conf` file in turn, then each `--set`. Mappings merge
deeply; lists and scalars replace. An unknown key or a value of the wrong type is a `ConfigError`
naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
import zoneinfo
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from segmentation.artifacts import ArtifactPaths
from segmentation.errors import ConfigError
from segmentation.tables import ALL_TABLES, CANONICAL_FIELDS, EVENT_TYPES

Scalar = Union[str, int, float, bool]  # noqa: UP007 - kept as typing.Union for _coerce

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SparkConfig:
    master: str | None = None
    remote: str | None = None
    app_name: str = "segmentation"
    log_level: str = "WARN"
    conf: dict[str, Scalar] = field(default_factory=dict)

    def validate(self) -> None:
        _require(
            self.remote is None or self.remote.startswith("sc://"),
            "spark.remote",
            "must be a Spark Connect URL (sc://host:port/;params)",
        )


@dataclass
class StorageConfig:
    root: str = "./data/lake"
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    catalog: str | None = None
    schema: str | None = None
    artifacts: str | None = None

    def validate(self) -> None:
        # An empty root would put every table in the working directory.
        _require(bool(self.root.strip()), "storage.root", "must name a directory (tables live under it)")
        for name in ("catalog", "schema"):
            value = getattr(self, name)
            _require(
                value is None or bool(_IDENTIFIER.match(value)),
                f"storage.{name}",
                "must be a plain SQL identifier",
            )
        _require(
            (self.catalog is None) or (self.schema is not None),
            "storage.schema",
            "is required when storage.catalog is set",
        )


@dataclass
class InputConfig:
    path: str = "./data/raw"
    format: Literal["json", "csv", "parquet", "text"] = "json"
    options: dict[str, Scalar] = field(default_factory=dict)
    pattern: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Scalar] = field(default_factory=dict)
    expressions: dict[str, str] = field(default_factory=dict)
    time_format: str | None = None
    event_types: dict[str, list[str]] = field(
        default_factory=lambda: {
            "view": ["view", "page_view", "pageview", "detail"],
            "search": ["search", "query"],
            "cart": ["cart", "add_to_cart", "addtocart"],
            "purchase": ["purchase", "order", "transaction", "buy"],
            "rate": ["rate", "rating", "review"],
            "return": ["return", "refund", "returned"],
        }
    )
    unknown_event_type: Literal["quarantine", "other"] = "quarantine"

    def validate(self) -> None:
        for name in self.mapping:
            _require(
                name in CANONICAL_FIELDS,
                f"input.mapping.{name}",
                f"is not a canonical field ({', '.join(CANONICAL_FIELDS)})",
            )
        for name in self.constants:
            _require(
                name in CANONICAL_FIELDS,
                f"input.constants.{name}",
                f"is not a canonical field ({', '.join(CANONICAL_FIELDS)})",
            )
        for name, expression in self.expressions.items():
            _require(
                name in CANONICAL_FIELDS,
                f"input.expressions.{name}",
                f"is not a canonical field ({', '.join(CANONICAL_FIELDS)})",
            )
            _require(
                isinstance(expression, str) and expression.strip() != "",
                f"input.expressions.{name}",
                "must be a Spark SQL expression",
            )
        for name in CANONICAL_FIELDS:
            sources = [
                kind
                for kind, table in (
                    ("mapping", self.mapping),
                    ("constants", self.constants),
                    ("expressions", self.expressions),
                )
                if name in table
            ]
            _require(
                len(sources) <= 1,
                f"input.{sources[-1] if sources else 'mapping'}.{name}",
                f"is also set in input.{sources[0] if sources else ''}: a field comes from a mapping, "
                "a constant or an expression, not two",
            )
        for name in self.event_types:
            _require(
                name in EVENT_TYPES,
                f"input.event_types.{name}",
                f"is not a canonical event type ({', '.join(EVENT_TYPES)})",
            )
        if self.format == "text":
            _require(self.pattern is not None, "input.pattern", "is required when input.format is text")


RuleAction = Literal["warn", "quarantine", "fail"]


@dataclass
class RuleConfig:
    name: str = ""
    expect: str = ""
    action: RuleAction = "quarantine"


@dataclass
class IngestConfig:
    mode: Literal["incremental", "full"] = "incremental"
    session_gap_minutes: int = 30
    future_tolerance_minutes: int = 60
    bot_max_events_per_day: int = 1000
    bot_max_events_per_minute: int = 60
    rules: list[RuleConfig] = field(default_factory=list)
    rule_actions: dict[str, RuleAction] = field(default_factory=dict)
    max_rejected_share: float = 0.5

    def validate(self) -> None:
        _require(
            0 < self.max_rejected_share <= 1,
            "ingest.max_rejected_share",
            "must be above 0 and at most 1 (1: never stop a batch for its rejects)",
        )
        _require(self.session_gap_minutes > 0, "ingest.session_gap_minutes", "must be positive")
        _require(self.bot_max_events_per_day > 0, "ingest.bot_max_events_per_day", "must be positive")
        _require(self.bot_max_events_per_minute > 0, "ingest.bot_max_events_per_minute", "must be positive")
        for i, rule in enumerate(self.rules):
            _require(
                bool(_IDENTIFIER.match(rule.name)),
                f"ingest.rules[{i}].name",
                "must be an identifier (it becomes a reason code)",
            )
            _require(bool(rule.expect.strip()), f"ingest.rules[{i}].expect", "must be a SQL expression")


@dataclass
class GenerateConfig:
    users: int = 2000
    days: int = 30
    seed: int = 42
    start_date: str = "2026-09-01"
    dirty_share: float = 0.02
    bot_users: int = 5
    partitions: int | None = None

    def validate(self) -> None:
        _require(self.users >= 1, "generate.users", "must be at least 1")
        _require(self.days >= 1, "generate.days", "must be at least 1")
        _require(0 <= self.dirty_share < 0.5, "generate.dirty_share", "must be in [0, 0.5)")
        _require(self.bot_users >= 0, "generate.bot_users", "must not be negative")
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ConfigError(
                f"config key 'generate.start_date' must be a date YYYY-MM-DD, got {self.start_date!r}"
            ) from None


@dataclass
class FeaturesConfig:
    as_of: str | None = None
    lookback_days: int | None = None
    min_events: int = 1
    clip_std: float = 5.0
    top_categories: int = 8
    top_devices: int = 4
    timezone: str = "UTC"
    # The activity features other than n_events enter the `features` array net of volume (their part
    # correlated with n_events taken out; features/scaling.py), so a heavy-tailed event count weighs
    # once in every distance, not once per activity feature. The `user_features` columns, profiles and
    # rules keep the plain values. On by default by the quality lab's evidence, end to end on the tuning
    # worlds and then the held-out worlds (README, "Activity net of volume"; docs/quality.md).
    partial_out_volume: bool = True
    # With partial_out_volume: the spend totals too (SPEND_TOTALS: purchase_count, purchase_total,
    # return_total, quantity_total), which grow with activity as the activity features do. Off: on the
    # tuning worlds it lifted profile worlds and lowered sequence worlds (README, "Spend net of volume
    # too"). The per-purchase mean and the shares are never netted.
    partial_out_spend: bool = False

    def validate(self) -> None:
        _require(self.min_events >= 1, "features.min_events", "must be at least 1")
        _require(self.clip_std > 0, "features.clip_std", "must be positive")
        _require(self.top_categories >= 0, "features.top_categories", "must not be negative")
        _require(self.top_devices >= 0, "features.top_devices", "must not be negative")
        _require(
            self.partial_out_volume or not self.partial_out_spend,
            "features.partial_out_spend",
            "nets the spend totals of volume alongside the activity features: set "
            "features.partial_out_volume true as well, or this false",
        )
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"config key 'features.timezone' must be a time zone name like UTC or Europe/Berlin, "
                f"got {self.timezone!r}"
            ) from None
        if self.as_of is not None:
            try:
                dt.datetime.fromisoformat(self.as_of)
            except ValueError:
                raise ConfigError(
                    f"config key 'features.as_of' must be an ISO-8601 date or time, got {self.as_of!r}"
                ) from None


@dataclass
class TrainingConfig:
    epochs: int = 20
    num_processes: int = 2
    local_mode: bool = True
    use_gpu: bool = False
    feeder: Literal["auto", "petastorm", "arrow"] = "auto"
    # Each process holds its training rows in memory after one read through the feeder when they take
    # at most this many MiB (0: read the table every epoch).
    cache_mb: int = 1024
    batch_size: int = 256  # per process; the smallest, see max_steps_per_epoch
    # The per-process batch grows past batch_size until an epoch takes at most this many optimizer
    # steps (null: never); the measurements behind it: README, "Training and embedding".
    max_steps_per_epoch: int | None = 64
    learning_rate: float = 0.002
    hidden_sizes: list[int] = field(default_factory=lambda: [64])
    embedding_dim: int = 8
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = 0.0
    noise_std: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    validation_share: float = 0.1
    patience: int = 5
    stop_after_epochs: int | None = None
    seed: int = 42
    tracking: bool = True
    tracking_uri: str | None = None
    experiment: str = "segmentation"

    def validate(self) -> None:
        _require(self.epochs >= 1, "training.epochs", "must be at least 1")
        _require(self.num_processes >= 1, "training.num_processes", "must be at least 1")
        _require(self.batch_size >= 1, "training.batch_size", "must be at least 1")
        _require(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "training.max_steps_per_epoch",
            "must be at least 1 or null",
        )
        _require(self.learning_rate > 0, "training.learning_rate", "must be positive")
        _require(self.embedding_dim >= 1, "training.embedding_dim", "must be at least 1")
        _require(0 <= self.dropout < 1, "training.dropout", "must be in [0, 1)")
        _require(self.noise_std >= 0, "training.noise_std", "must not be negative")
        _require(self.grad_clip >= 0, "training.grad_clip", "must not be negative")
        _require(0 <= self.validation_share < 0.5, "training.validation_share", "must be in [0, 0.5)")
        _require(self.patience >= 0, "training.patience", "must not be negative")
        _require(
            self.stop_after_epochs is None or self.stop_after_epochs >= 1,
            "training.stop_after_epochs",
            "must be at least 1",
        )
        _require(all(h >= 1 for h in self.hidden_sizes), "training.hidden_sizes", "must hold positive sizes")
        _require(self.cache_mb >= 0, "training.cache_mb", "must not be negative")


@dataclass
class EmbedConfig:
    method: Literal["arrow", "pandas_udf"] = "arrow"
    batch_size: int = 4096

    def validate(self) -> None:
        _require(self.batch_size >= 1, "embed.batch_size", "must be at least 1")


@dataclass
class SequenceConfig:
    """The `sequence` representation (stage `sequence`, built when `clustering.candidates` names it): a
    GRU over each user's last `max_events` events, trained contrastively through TorchDistributor with
    `training.*`'s processes, feeder, batch and seed, and applied to every user in Spark tasks."""

    max_events: int = 64
    # The token fields the encoder reads (user_sequences keeps them all). Not the hour by default: it is
    # a habit the raw features already carry, and on the lab's tuning worlds the contrastive objective
    # matched a user's two halves by it (each user's own hour) instead of by how the user behaves.
    inputs: list[Literal["event_type", "category", "hour", "gap", "value", "position"]] = field(
        default_factory=lambda: ["event_type", "category", "gap", "value", "position"]
    )
    epochs: int = 20
    # Per process; grown only past max_steps_per_epoch steps an epoch. Contrastive training needed
    # far more optimizer steps than the autoencoder's (see tests/unit/train/test_sequence_encoder.py).
    batch_size: int = 64
    max_steps_per_epoch: int = 200
    hidden_size: int = 32
    field_dim: int = 8
    learning_rate: float = 0.002
    temperature: float = 0.1

    def validate(self) -> None:
        _require(self.max_events >= 2, "sequence.max_events", "must be at least 2")
        _require("event_type" in self.inputs, "sequence.inputs", "must hold event_type (it marks events)")
        _require(self.epochs >= 1, "sequence.epochs", "must be at least 1")
        _require(self.batch_size >= 2, "sequence.batch_size", "must be at least 2 (the negatives)")
        _require(self.max_steps_per_epoch >= 1, "sequence.max_steps_per_epoch", "must be at least 1")
        _require(self.hidden_size >= 1, "sequence.hidden_size", "must be at least 1")
        _require(self.field_dim >= 1, "sequence.field_dim", "must be at least 1")
        _require(self.learning_rate > 0, "sequence.learning_rate", "must be positive")
        _require(self.temperature > 0, "sequence.temperature", "must be positive")


@dataclass
class IdecConfig:
    """The `idec` representation: the autoencoder and the embedding's k-means centres (at the k the
    evidence chose for the embedding) trained together, through TorchDistributor, on reconstruction +
    `gamma` x KL(P || Q) (cluster/refine.py)."""

    epochs: int = 20
    gamma: float = 0.1
    learning_rate: float = 0.001

    def validate(self) -> None:
        _require(self.epochs >= 1, "clustering.idec.epochs", "must be at least 1")
        _require(self.gamma > 0, "clustering.idec.gamma", "must be positive")
        _require(self.learning_rate > 0, "clustering.idec.learning_rate", "must be positive")


@dataclass
class ClusteringConfig:
    k: list[int] = field(default_factory=lambda: list(range(2, 13)))
    algorithms: list[Literal["kmeans", "bisecting_kmeans", "gaussian_mixture", "hdbscan"]] = field(
        default_factory=lambda: ["kmeans", "bisecting_kmeans"]
    )
    seed: int = 42
    max_iter: int = 20
    # How k-means starts: sample (cluster/kmeans.py, which holds the measurements) or MLlib's k-means||
    # (`restarts` full fits of `init_steps` rounds each).
    init_mode: Literal["sample", "k-means||"] = "sample"
    init_sample_rows: int = 50_000
    init_restarts: int = 10
    # Each fit's segmenter registered in MLflow's model registry (Unity Catalog's on Databricks, as
    # <storage.catalog>.<storage.schema>.<model_name>) as a pyfunc model, its `champion` alias moved
    # to it; `assign` refuses to score when the champion is not the model the segment tables hold.
    register: bool = True
    model_name: str = "segmenter"
    # gaussian_mixture, and kmeans under init_mode k-means||: full fits under successive seeds, the one
    # with the lowest cost kept
    restarts: int = 3
    # k-means|| rounds; MLlib's default 2 left 32 centres 32% above scikit-learn's inertia on the
    # benchmark's 1M x 16 points, 5 rounds matched it and converged in half the iterations
    init_steps: int = 5
    # Selection: the best `selection_metric` among the `candidates` representations whose smallest
    # segment holds at least `min_segment_share` of users and whose stability_ari reaches `min_stability`.
    # silhouette_common by default: the embedding's own silhouette rewards splits the autoencoder
    # sharpened (on generated logs it chose k=6, ARI 0.87-0.88 against the planted segments, in two of
    # three trainings where k=5 scored 0.95 and won on the scaled features in all three).
    selection_metric: Literal[
        "silhouette", "silhouette_common", "calinski_harabasz_common", "davies_bouldin_common", "jaccard_mean"
    ] = "silhouette_common"
    # How k is chosen (cluster/kselect.py; docs/quality.md measured each): from resampling evidence on
    # a driver sample, each representation's k by one rule, then MLlib fits at that k only; or
    # `metric`: MLlib fits at every k, the best selection_metric wins.
    k_rule: Literal["prediction_strength", "gap", "clusterboot", "silhouette", "metric"] = "clusterboot"
    ps_threshold: float = 0.8  # prediction_strength: the largest k reaching this
    # idec by default: on the lab's tuning worlds the default with it chose better (docs/quality.md);
    # sequence is opt-in (it lost on the lab's sequence worlds)
    candidates: list[Literal["embedding", "raw", "idec", "sequence"]] = field(
        default_factory=lambda: ["embedding", "raw", "idec"]
    )
    idec: IdecConfig = field(default_factory=IdecConfig)
    min_segment_share: float = 0.01
    min_stability: float = 0.6
    # stability_ari compares each fit with a refit on a random `stability_fraction` of the users under
    # another seed (subsample), with a refit under another seed on all users (seed), or is skipped (off).
    stability: Literal["subsample", "seed", "off"] = "subsample"
    stability_fraction: float = 0.8
    # The evidence for k (cluster/kselect.py) is computed on a uniform driver sample of at most this many users.
    selection_sample_rows: int = 5_000
    label_features: int = 3
    # Depth of the surrogate tree that explains the selected segments as rules (cluster/rules.py); 0: none.
    rules_depth: int = 4
    # A new fit's segment keeps the id (and label) of the previous segment it matches by members when
    # their Jaccard similarity reaches this (cluster/identity.py); otherwise it gets a new id.
    match_min_jaccard: float = 0.5
    parallelism: int = 4  # candidates fitted and scored concurrently (Spark jobs from driver threads)
    # Planted segments (JSON lines: user_id, segment) to score every partition against (ari_truth);
    # for generated and lab worlds only.
    truth_path: str | None = None

    def validate(self) -> None:
        _require(len(self.k) > 0, "clustering.k", "must list at least one k")
        _require(all(k >= 2 for k in self.k), "clustering.k", "must hold values of at least 2")
        _require(len(self.algorithms) > 0, "clustering.algorithms", "must list at least one algorithm")
        _require(self.max_iter >= 1, "clustering.max_iter", "must be at least 1")
        _require(self.restarts >= 1, "clustering.restarts", "must be at least 1")
        _require(self.init_steps >= 1, "clustering.init_steps", "must be at least 1")
        _require(self.init_restarts >= 1, "clustering.init_restarts", "must be at least 1")
        _require(self.init_sample_rows >= 1000, "clustering.init_sample_rows", "must be at least 1000")
        _require(0 <= self.min_segment_share < 1, "clustering.min_segment_share", "must be in [0, 1)")
        _require(0 < self.match_min_jaccard <= 1, "clustering.match_min_jaccard", "must be in (0, 1]")
        _require(-1 <= self.min_stability <= 1, "clustering.min_stability", "must be in [-1, 1]")
        _require(0 < self.stability_fraction <= 1, "clustering.stability_fraction", "must be in (0, 1]")
        _require(len(self.candidates) > 0, "clustering.candidates", "must list a representation")
        _require(self.parallelism >= 1, "clustering.parallelism", "must be at least 1")
        _require(0 < self.ps_threshold <= 1, "clustering.ps_threshold", "must be in (0, 1]")
        _require(
            self.selection_sample_rows >= 500, "clustering.selection_sample_rows", "must be at least 500"
        )
        _require(self.label_features >= 1, "clustering.label_features", "must be at least 1")
        # MLlib's trees go to depth 30; past a few levels a rule is no longer something a person reads
        _require(0 <= self.rules_depth <= 8, "clustering.rules_depth", "must be between 0 (no rules) and 8")
        self.idec.validate()
        if set(self.candidates) == {"idec"} and self.k_rule == "metric":
            raise ConfigError(
                "config key 'clustering.candidates' idec refines the embedding at the k its evidence "
                "chose, which k_rule metric does not compute: add another candidate or set another k_rule"
            )
        if self.selection_metric == "silhouette" and len(set(self.candidates)) > 1:
            raise ConfigError(
                "config key 'clustering.selection_metric' silhouette cannot compare representations "
                "(each is measured in its own space): use silhouette_common with several candidates"
            )


@dataclass
class DriftConfig:
    # A batch of unchanged behaviour raises an alarm on any statistic with probability at most alpha
    # (each threshold: the 1 - alpha / m quantile of the statistic under a simulated null).
    alpha: float = 0.05
    simulations: int = 4000
    seed: int = 7
    # When `segment run` retrains: always, or only when the latest drift measured for the current model
    # recommends it (or no model exists yet); `segment run --if-drifted` is `if_drifted` for one run.
    retrain: Literal["always", "if_drifted"] = "always"

    def validate(self) -> None:
        _require(0 < self.alpha < 1, "drift.alpha", "must be in (0, 1)")
        _require(self.simulations >= 100, "drift.simulations", "must be at least 100")


STREAM_TRIGGERS = ("available_now", "processing_time")
_INTERVAL = re.compile(r"^\d+ *(milliseconds?|seconds?|minutes?|hours?)$")
_FILE_AGE = re.compile(r"^\d+(ms|s|m|min|h|d)$")


@dataclass
class StreamConfig:
    trigger: str = "available_now"
    interval: str = "1 minute"
    max_files_per_trigger: int = 100
    max_file_age: str = "365d"
    checkpoint: str | None = None
    assign: bool = True

    def validate(self) -> None:
        _require(
            self.trigger in STREAM_TRIGGERS, "stream.trigger", f"must be one of {', '.join(STREAM_TRIGGERS)}"
        )
        _require(
            bool(_INTERVAL.match(self.interval.strip())),
            "stream.interval",
            f"{self.interval!r} is not an interval such as '30 seconds' or '5 minutes'",
        )
        _require(self.max_files_per_trigger >= 1, "stream.max_files_per_trigger", "must be at least 1")
        _require(
            bool(_FILE_AGE.match(self.max_file_age.strip())),
            "stream.max_file_age",
            f"{self.max_file_age!r} is not a duration such as '7d' or '12h'",
        )
        _require(
            self.checkpoint is None or bool(self.checkpoint.strip()),
            "stream.checkpoint",
            "must name a directory",
        )


@dataclass
class ReportConfig:
    path: str = "./data/reports"
    # Users drawn (by a hash of user_id) for the report's 2-D map; 0 leaves the map out. The sample
    # comes to the driver, so it stays small.
    map_users: int = 2000

    def validate(self) -> None:
        _require(0 <= self.map_users <= 100_000, "report.map_users", "must be between 0 and 100000")


@dataclass
class PrivacyConfig:
    pseudonymize: bool = False
    key_env: str = "SEGMENTATION_HMAC_KEY"
    secret_scope: str | None = None
    secret_key: str | None = None
    pii_fields: list[str] = field(default_factory=list)
    min_segment_size: int = 50

    def validate(self) -> None:
        _require(self.min_segment_size >= 0, "privacy.min_segment_size", "must not be negative")
        for name in self.pii_fields:
            _require(
                name in CANONICAL_FIELDS and name not in ("user_id", "event_time"),
                "privacy.pii_fields",
                f"lists {name!r}: only optional canonical fields can be withheld from silver",
            )
        _require(
            (self.secret_scope is None) == (self.secret_key is None),
            "privacy.secret_key",
            "and privacy.secret_scope go together (a Databricks secret)",
        )


@dataclass
class RecommendConfig:
    event_types: list[str] = field(default_factory=lambda: ["purchase"])
    top_n: int = 20
    rank_by: Literal["support", "distinctive", "lift"] = "support"
    min_buyers: int = 5
    holdout_days: int = 14
    eval_k: int = 10

    def validate(self) -> None:
        _require(bool(self.event_types), "recommend.event_types", "must name at least one event type")
        for name in self.event_types:
            _require(
                name in EVENT_TYPES,
                "recommend.event_types",
                f"lists {name!r}, not one of {list(EVENT_TYPES)}",
            )
        _require(self.min_buyers >= 1, "recommend.min_buyers", "must be at least 1")
        _require(self.holdout_days >= 1, "recommend.holdout_days", "must be at least 1")
        _require(1 <= self.eval_k <= self.top_n, "recommend.eval_k", "must be between 1 and recommend.top_n")


@dataclass
class MaintainConfig:
    tables: list[str] = field(default_factory=list)
    purge_deletion_vectors: bool = True
    optimize: bool = True
    vacuum_retain_hours: float | None = 168.0
    allow_short_retention: bool = False

    def validate(self) -> None:
        for name in self.tables:
            _require(name in ALL_TABLES, "maintain.tables", f"lists {name!r}, not a product table")
        retain = self.vacuum_retain_hours
        _require(retain is None or retain >= 0, "maintain.vacuum_retain_hours", "must not be negative")
        _require(
            retain is None or retain >= 168 or self.allow_short_retention,
            "maintain.vacuum_retain_hours",
            "under 168 (a week) can delete files a running job or a time-travel query still reads; set "
            "maintain.allow_short_retention: true to accept that",
        )


@dataclass
class BenchConfig:
    work_dir: str = "./data/bench"
    e2e_events: list[int] = field(default_factory=lambda: [1_000_000, 2_000_000, 4_000_000])
    repeats: int = 3
    embed_rows: int = 1_000_000
    train_epochs: int = 8  # per feeder launch; steady throughput is the median of epochs 2..n
    kmeans_rows: int = 1_000_000
    kmeans_dim: int = 16
    kmeans_k: list[int] = field(default_factory=lambda: [8, 32])
    # The first size's logs again through spark-submit on a standalone cluster on this machine (two
    # 1-core workers; training on the executors), stage by stage beside the local run.
    cluster: bool = True
    # `segment bench --quality`: worlds of the generator family (tools/generate/worlds.py)
    quality_worlds: int = 30  # held-out worlds measured for the reported figures
    quality_users: int = 3000  # users per world
    quality_max_k: int = 14  # k is searched over 2..this (worlds plant 3..12)

    def validate(self) -> None:
        _require(self.quality_worlds >= 1, "bench.quality_worlds", "must be at least 1")
        _require(self.quality_users >= 500, "bench.quality_users", "must be at least 500")
        _require(self.quality_max_k >= 3, "bench.quality_max_k", "must be at least 3")
        _require(len(self.e2e_events) >= 2, "bench.e2e_events", "must list at least two sizes")
        _require(self.repeats >= 1, "bench.repeats", "must be at least 1")
        _require(self.train_epochs >= 2, "bench.train_epochs", "must be at least 2")


@dataclass
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    input: InputConfig = field(default_factory=InputConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    maintain: MaintainConfig = field(default_factory=MaintainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def paths(self) -> ArtifactPaths:
        """Where models, scaling statistics, reports and other non-table artifacts live."""
        return ArtifactPaths.from_config(self)


BASE_CONF = resources.files("segmentation") / "resources" / "base.yaml"
"""Every default with a comment; inside the package, so a wheel (on Databricks, in --py-files) has it."""


def load_config(
    conf_files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build a validated `Config` from base.yaml, the overlays in order, then `key=value` overrides."""
    merged = _parse_yaml(BASE_CONF.read_text(), "the package's base.yaml")
    for path in conf_files:
        merged = deep_merge(merged, _read_yaml(path))
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    return build_config(merged)


def build_config(data: dict[str, Any]) -> Config:
    """Validate a nested mapping against the schema and return the typed config."""
    cfg = _coerce(data, Config, "")
    _check_values(cfg)
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: dates and times in the config are strings the checks parse
    and name the key of (PyYAML's own date parsing failed on 2026-13-01 naming no key). Booleans are
    YAML 1.2's `true`/`false` only: YAML 1.1 also reads `on`, `off`, `yes`, `no` as booleans, which
    turned `clustering.stability: off` into False."""


_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, _BOOL if tag == "tag:yaml.org,2002:bool" else regexp)
        for tag, regexp in resolvers
        if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_override(item: str) -> dict[str, Any]:
    """`a.b.c=value` → {"a": {"b": {"c": value}}}, the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc.__class__.__name__})") from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in `overlay` replaces what `base` had."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        hint = ""
        if "=" in p.name:
            hint = (
                " (--conf after the job file takes the product's YAML config; Spark settings go before "
                "the job file as spark-submit's --conf key=value, or in the YAML under spark.conf)"
            )
        raise ConfigError(f"config file not found: {path}{hint}")
    return _parse_yaml(p.read_text(), f"config file {path}")


def _parse_yaml(text: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping at the top level")
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    where = key or "<top level>"
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        for name in value:
            if name not in known:
                dotted = f"{key}.{name}" if key else str(name)
                raise ConfigError(f"unknown config key '{dotted}'")
        kwargs = {
            name: _coerce(value[name], hints[name], f"{key}.{name}" if key else name)
            for name in known
            if name in value
        }
        return tp(**kwargs)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{where}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(
            f"config key '{where}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        # YAML reads 2026-09-01 as a date; a string-typed key takes it back as written.
        if isinstance(value, dt.date | dt.datetime):
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{where}' has an unsupported type {tp!r}")  # pragma: no cover


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


def _check_values(cfg: Config) -> None:
    """Checks that types alone cannot express, each section's beside its fields; each names the key."""
    for section in dataclasses.fields(cfg):
        getattr(cfg, section.name).validate()
    if cfg.training.tracking and not cfg.training.tracking_uri:
        # MLflow's file store (mlflow/store/tracking/file_store.py, _is_valid_run_directory) treats
        # every run under a folder named `artifacts` as missing: a path-traversal guard. Training
        # would fail after its last epoch with "Run ... not found"; say so before it starts.
        mlruns = cfg.paths.mlruns.resolve()
        _require(
            "artifacts" not in mlruns.parts[:-1],
            "storage.artifacts",
            f"puts MLflow's file store at {mlruns}, under a folder named 'artifacts', where MLflow finds "
            "no run; name that folder otherwise, or set training.tracking_uri (or training.tracking: false)",
        )
