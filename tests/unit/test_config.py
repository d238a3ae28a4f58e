import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from segmentation.config import BASE_CONF, Config, build_config, load_config, parse_override
from segmentation.errors import ConfigError
from tests.conftest import REPO


def test_base_yaml_states_exactly_the_defaults():
    assert yaml.safe_load(BASE_CONF.read_text()) == dataclasses.asdict(Config())


def test_overlays_merge_deeply_and_set_comes_last(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("input:\n  format: csv\n  options: {header: true}\nclustering:\n  k: [3]\n")
    second = tmp_path / "b.yaml"
    second.write_text("input:\n  options: {sep: ';'}\n")
    cfg = load_config([str(first), str(second)], ["clustering.k=[7, 8]", "input.mapping.user_id=uid"])
    assert cfg.input.format == "csv"
    assert cfg.input.options == {"header": True, "sep": ";"}
    assert cfg.clustering.k == [7, 8]
    assert cfg.input.mapping == {"user_id": "uid"}
    assert cfg.training.epochs == Config().training.epochs


def test_local_overlay_is_the_embedded_default():
    cfg = load_config([str(REPO / "conf" / "local.yaml")])
    assert cfg.spark.master == "local[*]"
    assert cfg.storage.root == "./data/lake"
    assert cfg.input.path == "./data/raw"


def test_databricks_overlay_is_valid():
    cfg = load_config([str(REPO / "conf" / "databricks.yaml")])
    assert cfg.storage.engine == "delta-spark"
    assert cfg.storage.catalog and cfg.storage.schema


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.epoch=3", "training.epoch"),
        ("nonsense.x=1", "nonsense"),
        ("input.options=3", "input.options"),
        ("training.epochs=many", "training.epochs"),
        ("training.use_gpu=maybe", "training.use_gpu"),
        ("clustering.k=[4, five]", "clustering.k[1]"),
        ("storage.engine=hive", "storage.engine"),
        ("clustering.k=[1]", "clustering.k"),
        ("input.mapping.userid=uid", "input.mapping.userid"),
        ("storage.catalog=main; DROP", "storage.catalog"),
        ("generate.start_date=tomorrow", "generate.start_date"),
        ("generate.start_date=2026-13-01", "generate.start_date"),  # a date YAML itself cannot parse
        ("storage.root=''", "storage.root"),
        ("features.as_of=2026-02-30T10:00:00", "features.as_of"),
        ("clustering.restarts=0", "clustering.restarts"),
        ("clustering.init_steps=0", "clustering.init_steps"),
        ("clustering.init_restarts=0", "clustering.init_restarts"),
        ("clustering.init_sample_rows=10", "clustering.init_sample_rows"),
        ("clustering.init_mode=random", "clustering.init_mode"),
        ("training.max_steps_per_epoch=0", "training.max_steps_per_epoch"),
        ("maintain.vacuum_retain_hours=1", "maintain.vacuum_retain_hours"),
        ("maintain.tables=[users]", "maintain.tables"),
        ("stream.trigger=once", "stream.trigger"),
        ("stream.interval=often", "stream.interval"),
        ("stream.max_files_per_trigger=0", "stream.max_files_per_trigger"),
        ("stream.max_file_age=a week", "stream.max_file_age"),
        ("report.map_users=-1", "report.map_users"),
        ("spark.remote=localhost:15002", "spark.remote"),  # not an sc:// URL
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config([], [override])


def test_a_spark_setting_given_as_a_config_file_says_where_it_belongs():
    with pytest.raises(ConfigError, match="Spark settings go before the job file"):
        load_config(["spark.executor.memory=4g"])


def test_defaults_come_from_inside_the_package():
    # A wheel (Databricks, spark-submit --py-files) has no source tree: base.yaml must ship in the package.
    assert "site-packages" in str(BASE_CONF) or "lib/segmentation/resources" in str(BASE_CONF)
    assert load_config([], ["maintain.vacuum_retain_hours=1", "maintain.allow_short_retention=true"])


def test_int_is_accepted_where_a_number_is_expected():
    assert build_config({"training": {"learning_rate": 1}}).training.learning_rate == 1.0


def test_date_values_become_strings():
    assert load_config([], ["generate.start_date=2026-01-05"]).generate.start_date == "2026-01-05"


def test_override_needs_key_and_value():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("training.epochs")


def test_missing_conf_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([str(tmp_path / "nope.yaml")])


def test_cli_reports_bad_config_in_one_line_and_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "segmentation.cli", "features", "--set", "training.epochs=abc"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "training.epochs" in lines[0]


def test_an_impossible_date_in_a_file_names_its_key(tmp_path):
    overlay = tmp_path / "dates.yaml"
    overlay.write_text("features:\n  as_of: 2026-13-01\n")
    with pytest.raises(ConfigError, match="config key 'features.as_of'"):
        load_config([str(overlay)])


def test_yaml_words_stay_words():
    """YAML 1.1 reads on/off/yes/no as booleans; the config takes only true/false as booleans, so
    `clustering.stability: off` means the documented value."""
    cfg = load_config([], ["clustering.stability=off"])
    assert cfg.clustering.stability == "off"


def test_stream_checkpoint_defaults_beside_the_artifacts_and_can_be_set(tmp_path):
    cfg = load_config([], [f"storage.root={tmp_path}"])
    assert cfg.paths.stream_checkpoint == tmp_path / "_artifacts" / "stream" / "checkpoint"
    moved = load_config([], [f"storage.root={tmp_path}", f"stream.checkpoint={tmp_path / 'ck'}"])
    assert moved.paths.stream_checkpoint == tmp_path / "ck"


def test_an_mlflow_file_store_under_a_folder_named_artifacts_is_refused(tmp_path):
    """MLflow's file store reports every run under a folder named `artifacts` as not found."""
    with pytest.raises(ConfigError, match="storage.artifacts.*named 'artifacts'"):
        load_config([], [f"storage.artifacts={tmp_path / 'artifacts'}"])
    load_config([], [f"storage.artifacts={tmp_path / 'artifacts'}", "training.tracking=false"])
    load_config([], [f"storage.artifacts={tmp_path / 'artifacts'}", "training.tracking_uri=databricks"])
    load_config([], [f"storage.artifacts={tmp_path / 'models'}"])


def test_netting_the_spend_totals_needs_netting_on():
    with pytest.raises(ConfigError, match="'features.partial_out_spend'.*partial_out_volume true"):
        load_config([], ["features.partial_out_volume=false", "features.partial_out_spend=true"])
