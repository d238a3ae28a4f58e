"""Drift after assign, on copies of the shared lake: replays of unchanged behaviour (new users whose
histories copy existing users') stay quiet; a planted new behaviour fires, recommends retraining, and
`segment run --if-drifted` acts on the latest measurement."""

import json
import shutil

import pytest
from pyspark.sql import functions as F

from segmentation.assign.drift import retrain_recommended
from segmentation.cli import main
from segmentation.pipeline import run_stage
from segmentation.stage import StageContext
from segmentation.storage import open_store
from segmentation.tables import USER_SEGMENTS
from tests.conftest import LAKE_SETTINGS, REPO, make_config
from tests.integration.segment_checks import PLANTED, day2_logs, planted_group

REPLAYS = 3
REPLAY_USERS = 300


def _copy(lake, tmp_path, name: str):
    root = tmp_path / name
    shutil.copytree(lake.root / "lake", root / "lake")
    return make_config(root, *LAKE_SETTINGS, f"input.path={root / 'day2'}"), root


def _summary(store, run_id: str):
    return store.read("segment_drift").where(f"run_id = '{run_id}' AND kind = 'summary'").head()


@pytest.mark.slow
def test_replays_of_unchanged_behaviour_stay_quiet_and_a_planted_shift_fires(spark, lake, tmp_path, capsys):
    alarms = []
    for replay in range(REPLAYS):
        cfg, root = _copy(lake, tmp_path, f"replay{replay}")
        store = open_store(spark, cfg.storage)
        users = [r.user_id for r in store.read(USER_SEGMENTS).select("user_id").collect()]
        sample = sorted(users)[replay::7][:REPLAY_USERS]  # a different tenth of the users each time
        day2_logs(spark, store, [], sample, root / "day2")
        run_stage(spark, cfg, "ingest", "replay")
        result = run_stage(spark, cfg, "assign", "replay-assign")
        summary = _summary(store, "replay-assign")
        assert summary.batch_rows == result.users_scored == len(sample)
        alarms.append(result.drifted)
        rows = store.read("segment_drift").where("run_id = 'replay-assign' AND kind = 'feature'").collect()
        assert rows and all(r.threshold > 0 and r.alpha == cfg.drift.alpha for r in rows)
    print(f"false alarms: {sum(alarms)} of {REPLAYS} replays of unchanged behaviour")
    assert sum(alarms) <= 1  # alpha 0.05 each: two or more alarms in three would happen < 1% of the time

    quiet = StageContext.create(spark, cfg, "check")
    if not alarms[-1]:
        assert retrain_recommended(quiet)[0] is False
        capsys.readouterr()
        args = ["--conf", str(REPO / "conf" / "local.yaml"), "--set", f"storage.root={cfg.storage.root}"]
        assert main(["run", "--if-drifted", *args, "--set", "spark.master=local[2]"]) == 0
        assert "nothing to do" in capsys.readouterr().out
        assert _check_drift(args, capsys, "if_drifted")["retrain"] is False  # the bundle's condition
        assert _check_drift(args, capsys, "always") == {"retrain": True, "why": "drift.retrain is always"}

    cfg, root = _copy(lake, tmp_path, "shift")
    store = open_store(spark, cfg.storage)
    top = store.read("events_silver").groupBy("category", "device").count().orderBy(F.desc("count")).head()
    planted_group(root / "day2", top.category, top.device)
    run_stage(spark, cfg, "ingest", "shift")
    result = run_stage(spark, cfg, "assign", "shift-assign")
    assert result.users_scored == PLANTED and result.drifted
    assert {"share_rate", "share_night", "segments"} <= set(result.drifted_statistics)
    assert _summary(store, "shift-assign").drifted
    retrain, why = retrain_recommended(StageContext.create(spark, cfg, "check"))
    assert retrain and "shift-assign" in why
    args = ["--conf", str(REPO / "conf" / "local.yaml"), "--set", f"storage.root={cfg.storage.root}"]
    assert _check_drift(args, capsys, "if_drifted") == {"retrain": True, "why": why}


def _check_drift(args: list[str], capsys, policy: str) -> dict:
    """`segment check-drift` (the Databricks pipeline's first task) under drift.retrain=`policy`."""
    capsys.readouterr()
    assert (
        main(["check-drift", *args, "--set", "spark.master=local[2]", "--set", f"drift.retrain={policy}"])
        == 0
    )
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])
