"""databricks.yml, target by target: its variables resolved the way `databricks bundle` resolves them,
every job and resource validated by the typed models of the `databricks-bundles` package (which refuse
unknown fields and wrong types), and every task checked against this repository: its entry point, its
config files and `--set` overrides (loaded through the product's own config validation), its library
and its compute. No workspace is reachable from here, so `${workspace.*}` stays symbolic; references
to the bundle's own resources are checked to name one that exists."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from databricks.bundles.experiments import MlflowExperiment
from databricks.bundles.jobs import Job
from databricks.bundles.schemas import Schema
from databricks.bundles.volumes import Volume

from segmentation.config import load_config
from segmentation.registry import COMMANDS, STAGES

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "databricks.yml"
REFERENCE = re.compile(r"\$\{([^}]+)\}")
# What `databricks bundle` itself fills in at deploy time (not knowable without a workspace).
DEPLOY_TIME = {
    "workspace.file_path",
    "workspace.root_path",
    "workspace.current_user.userName",
    "bundle.name",
    "bundle.target",
}
MODELS = {"jobs": Job, "schemas": Schema, "volumes": Volume, "experiments": MlflowExperiment}
PROD_VARS = {
    "service_principal": "6f1e2c4a-0b7d-4e8f-9a1b-2c3d4e5f6a7b",
    "alert_email": "segments-oncall@example.com",
}


class UnresolvedVariable(ValueError):
    pass


def _merge(base: Any, over: Any) -> Any:
    """Bundle target overrides: mappings merge key by key; tasks and job clusters by their key."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(over, list) and base and isinstance(base[0], dict):
        key = next((k for k in ("task_key", "job_cluster_key") if k in base[0]), None)
        if key:
            merged = {item[key]: item for item in base}
            for item in over:
                merged[item[key]] = _merge(merged.get(item[key], {}), item)
            return list(merged.values())
    return over


def _substitute(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, values) for v in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if not name.startswith("var."):
            return match.group(0)
        if values.get(name[4:]) is None:
            raise UnresolvedVariable(f"no value for variable {name[4:]!r}")
        return str(values[name[4:]])

    whole = re.fullmatch(r"\$\{var\.([^}]+)\}", node)
    if whole and values.get(whole.group(1)) is not None and not isinstance(values[whole.group(1)], str):
        return values[whole.group(1)]  # a typed value (num_workers: ${var.workers}) keeps its type
    return REFERENCE.sub(one, node)


def resolve(target: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bundle as deployed to `target`: the target's settings merged over the top level, then every
    ${var.*} replaced by --var overrides, the target's values or the defaults, in that order."""
    raw = yaml.safe_load(BUNDLE.read_text())
    spec = raw["targets"][target] or {}
    config = _merge(
        {k: v for k, v in raw.items() if k not in ("targets", "variables")},
        {k: copy.deepcopy(v) for k, v in spec.items() if k not in ("mode", "default", "variables")},
    )
    values = {name: var.get("default") for name, var in raw["variables"].items()}
    values.update(spec.get("variables") or {})
    values.update(overrides or {})
    # Variable values may themselves hold deploy-time references (dev: the deployer's user name).
    config = _substitute(config, values)
    config["mode"] = spec.get("mode")
    return config


def _references(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_references(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_references(v) for v in node)) if node else set()
    return set(REFERENCE.findall(node)) if isinstance(node, str) else set()


def _tasks(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (job_key, job, task) for job_key, job in config["resources"]["jobs"].items() for task in job["tasks"]
    ]


JOB_PARAMETER = re.compile(r"\{\{job\.parameters\.([a-z_]+)\}\}")


def _task_config(task: dict[str, Any], config: dict[str, Any], job: dict[str, Any]):
    """The product config the task's arguments produce, through the CLI's own loader: the --conf files
    of this repository and every --set (deploy-time references replaced by plausible values, job
    parameters by their defaults)."""
    args = task["spark_python_task"]["parameters"]
    defaults = {p["name"]: p["default"] for p in job.get("parameters", [])}
    confs, sets = [], []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        value = value.replace("${workspace.file_path}/", "")
        for ref in REFERENCE.findall(value):
            value = value.replace("${" + ref + "}", _lookup(config, ref))
        value = JOB_PARAMETER.sub(lambda m: defaults[m.group(1)], value)
        if flag == "--conf":
            confs.append(str(REPO / value))
        elif flag == "--set":
            sets.append(value)
        else:
            assert flag == "--run-id", f"unexpected task argument {flag}"
    for path in confs:
        assert Path(path).is_file(), f"task {task['task_key']}: --conf {path} does not exist"
    return load_config(confs, sets)


def _lookup(config: dict[str, Any], ref: str) -> str:
    if ref in DEPLOY_TIME:
        return {"workspace.current_user.userName": "someone@example.com"}.get(ref, "/Workspace/x")
    _, kind, key, field = ref.split(".", 3)
    return str(config["resources"][kind][key][field])


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_resource_is_valid_for_the_typed_models(target: str):
    config = resolve(target, PROD_VARS if target == "prod" else None)
    kinds = config["resources"]
    assert set(kinds) == set(MODELS), "the bundle declares jobs, the schema, its volumes and the experiment"
    for kind, resources in kinds.items():
        for key, resource in resources.items():
            try:
                MODELS[kind].from_dict(copy.deepcopy(resource))
            except (ValueError, TypeError) as exc:
                pytest.fail(f"{target}: resources.{kind}.{key}: {exc}")


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_reference_names_something_that_exists(target: str):
    config = resolve(target, PROD_VARS if target == "prod" else None)
    for ref in _references(config["resources"]) | _references(config.get("permissions", [])):
        if ref in DEPLOY_TIME or ref.startswith("job."):
            continue
        assert ref.startswith("resources."), f"{target}: unknown reference ${{{ref}}}"
        _, kind, key, field = ref.split(".", 3)
        assert field in config["resources"][kind][key], f"{target}: ${{{ref}}} names no such field"


def test_production_needs_its_identity_and_alerts():
    with pytest.raises(UnresolvedVariable, match="service_principal|alert_email"):
        resolve("prod")
    config = resolve("prod", PROD_VARS)
    assert config["mode"] == "production"
    assert config["run_as"] == {"service_principal_name": PROD_VARS["service_principal"]}
    assert {"level": "CAN_MANAGE", "service_principal_name": PROD_VARS["service_principal"]} in config[
        "permissions"
    ]
    assert all(p["level"] in {"CAN_VIEW", "CAN_RUN", "CAN_MANAGE"} for p in config["permissions"])
    assert config["workspace"]["root_path"].startswith("/Workspace/Shared/")
    jobs = config["resources"]["jobs"]
    for key, job in jobs.items():
        assert job["email_notifications"]["on_failure"] == [PROD_VARS["alert_email"]], key
        assert job["max_concurrent_runs"] == 1, key
        assert "schedule" in job or "trigger" in job, f"{key} never runs on its own"
        computing = [task for task in job["tasks"] if "condition_task" not in task]  # a condition cannot fail
        assert all(task.get("max_retries", 0) >= 1 for task in computing), f"{key}: a task without retries"
    assert resolve("dev")["mode"] == "development"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_task_runs_an_entry_point_of_this_repository_with_a_valid_config(target: str):
    config = resolve(target, PROD_VARS if target == "prod" else None)
    stages = {s.name for s in STAGES}
    wheel = config["artifacts"]["segmentation_wheel"]
    assert "-w dist" in wheel["build"]
    seen = set()
    for job_key, job, task in _tasks(config):
        if "condition_task" in task:
            continue
        entry = REPO / task["spark_python_task"]["python_file"]
        assert entry.is_file() and entry.parent.name == "jobs", f"{job_key}.{task['task_key']}: {entry}"
        command = entry.stem.replace("_", "-")
        assert command in stages | set(COMMANDS), (
            f"{job_key}.{task['task_key']}: jobs/{entry.name} runs nothing"
        )
        assert task["libraries"] == [{"whl": "./dist/*.whl"}], "the task library is the built wheel"
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        cluster = clusters[task["job_cluster_key"]]
        cfg = _task_config(task, config, job)
        assert cfg.storage.schema == config["resources"]["schemas"]["segmentation"]["name"]
        assert cfg.storage.catalog == config["resources"]["schemas"]["segmentation"]["catalog_name"]
        assert cfg.training.experiment == config["resources"]["experiments"]["segmentation"]["name"]
        for volume, path in (
            ("raw", cfg.input.path),
            ("artifacts", cfg.storage.artifacts),
            ("reports", cfg.report.path),
        ):
            assert path.endswith("/" + config["resources"]["volumes"][volume]["name"]), (
                task["task_key"],
                path,
            )
        gpu = task["task_key"] == "train"
        # The train task alone trains on GPUs; every other task runs on CPU nodes with a CPU config.
        assert cfg.training.use_gpu is gpu, f"{job_key}.{task['task_key']}"
        assert ("-gpu-" in cluster["spark_version"]) is gpu, f"{job_key}.{task['task_key']}"
        if gpu:
            assert cluster["spark_conf"]["spark.task.resource.gpu.amount"] == "1"
            assert cfg.training.num_processes == cluster["num_workers"]
        seen.add(entry.stem)
    pipeline = [t["task_key"] for t in config["resources"]["jobs"]["segmentation_pipeline"]["tasks"]]
    stages_in_order = [s.name for s in STAGES if s.in_pipeline]
    assert pipeline == ["check_drift", "retrain", *stages_in_order], (
        "the pipeline job runs every stage in order"
    )
    assert {"assign", "stream", "maintain"} <= seen


def test_node_types_come_from_variables_so_any_cloud_can_deploy():
    raw = yaml.safe_load(BUNDLE.read_text())
    for job in raw["resources"]["jobs"].values():
        for cluster in job["job_clusters"]:
            assert cluster["new_cluster"]["node_type_id"] in ("${var.cpu_node_type}", "${var.gpu_node_type}")
            assert cluster["new_cluster"]["spark_version"] in ("${var.cpu_runtime}", "${var.gpu_runtime}")
    azure = resolve(
        "prod", {**PROD_VARS, "cpu_node_type": "Standard_D4ds_v5", "gpu_node_type": "Standard_NC4as_T4_v3"}
    )
    train = next(
        c
        for c in azure["resources"]["jobs"]["segmentation_pipeline"]["job_clusters"]
        if c["job_cluster_key"] == "gpu"
    )
    assert train["new_cluster"]["node_type_id"] == "Standard_NC4as_T4_v3"
    Job.from_dict(copy.deepcopy(azure["resources"]["jobs"]["segmentation_pipeline"]))


def test_the_validation_refuses_what_the_service_would():
    """The typed models are the check: an unknown field or a wrong type fails, as deploy would."""
    job = copy.deepcopy(resolve("dev")["resources"]["jobs"]["segmentation_assign"])
    job["tasks"][0]["spark_python_task"]["python_files"] = job["tasks"][0]["spark_python_task"].pop(
        "python_file"
    )
    with pytest.raises(ValueError, match="python_files"):
        Job.from_dict(job)
    job = copy.deepcopy(resolve("dev")["resources"]["jobs"]["segmentation_assign"])
    job["max_concurrent_runs"] = "one"
    with pytest.raises(ValueError):
        Job.from_dict(job)


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_the_pipeline_retrains_only_when_its_drift_check_says_so(target: str):
    config = resolve(target, PROD_VARS if target == "prod" else None)
    job = config["resources"]["jobs"]["segmentation_pipeline"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    check, condition = tasks["check_drift"], tasks["retrain"]["condition_task"]
    assert condition == {"op": "EQUAL_TO", "left": "{{tasks.check_drift.values.retrain}}", "right": "true"}
    assert tasks["retrain"]["depends_on"] == [{"task_key": "check_drift"}]
    assert tasks["ingest"]["depends_on"] == [{"task_key": "retrain", "outcome": "true"}]
    # every stage hangs off ingest, so none runs when the condition is false
    for key, task in tasks.items():
        if key not in ("check_drift", "retrain", "ingest"):
            assert len(task["depends_on"]) == 1, key
    assert _task_config(check, config, job).drift.retrain == "always"  # the parameter's default
    with_policy = {**job, "parameters": [{"name": "retrain", "default": "if_drifted"}]}
    assert _task_config(check, config, with_policy).drift.retrain == "if_drifted"
