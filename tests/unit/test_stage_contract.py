"""The stage contract and the registry (pure: no SparkSession)."""

import dataclasses
import importlib
import inspect

from segmentation import registry
from segmentation.cli import build_parser
from segmentation.stage import StageContext, StageResult, summary_field
from tests.conftest import REPO


@dataclasses.dataclass
class _Part:
    name: str
    share: float


@dataclasses.dataclass
class _Result(StageResult):
    label: str = summary_field("")
    parts: list[_Part] = dataclasses.field(default_factory=list)


def test_details_hold_the_typed_fields_and_summary_the_marked_ones():
    result = _Result(rows_in=3, rows_out=2, seconds=1.5, label="x", parts=[_Part("a", 0.5)])
    assert result.details == {"seconds": 1.5, "label": "x", "parts": [{"name": "a", "share": 0.5}]}
    assert result.summary() == {
        "rows_in": 3,
        "rows_out": 2,
        "rows_quarantined": 0,
        "rows_duplicate": 0,
        "seconds": 1.5,
        "label": "x",
    }


def test_every_stage_is_one_function_of_a_context_returning_a_result():
    names = [s.name for s in registry.STAGES]
    assert len(names) == len(set(names)) and not set(names) & set(registry.COMMANDS)
    for entry in registry.STAGES:
        module = importlib.import_module(entry.module)
        assert entry.function() is module.run
        signature = inspect.signature(module.run)
        assert list(signature.parameters) == ["ctx"], entry.name
        assert signature.parameters["ctx"].annotation in ("StageContext", StageContext), entry.name
        returned = typing_result(module)
        assert issubclass(returned, StageResult), entry.name


def typing_result(module) -> type:
    import typing

    return typing.get_type_hints(module.run)["return"]


def test_jobs_and_cli_offer_exactly_the_registered_stages_and_commands():
    offered = {*(s.name for s in registry.STAGES), *registry.COMMANDS}
    # every stage and command has a job (jobs/check_drift.py runs `check-drift`), but the benchmark: it
    # runs spark-submit itself
    commands = {p: p.stem.replace("_", "-") for p in (REPO / "jobs").glob("*.py")}
    assert set(commands.values()) == offered - {"bench"}
    for path, command in commands.items():
        assert f'job_main("{command}")' in path.read_text(), path
    choices = next(a for a in build_parser()._actions if a.dest == "stage").choices
    assert set(choices) == offered


def test_the_readme_table_of_stages_is_the_registry():
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- stages -->\n", 1)[1].split("\n<!-- /stages -->", 1)[0]
    assert table == registry.markdown_table(), "update README.md from registry.markdown_table()"


def test_the_pipeline_is_the_registered_stages_in_data_flow_order():
    assert [s.name for s in registry.PIPELINE] == [
        "ingest",
        "features",
        "train",
        "embed",
        "sequence",
        "cluster",
        "recommend",
        "report",
    ]
    # every stage reads only what an earlier stage, the input, or an earlier run's out-of-pipeline
    # stage (assign's drift, shown by the report) wrote
    earlier_runs = {"input.path", "pipeline_runs"} | {
        t for s in registry.STAGES if not s.in_pipeline for t in s.writes
    }
    written: set[str] = set()
    for entry in registry.PIPELINE:
        assert set(entry.reads) <= written | earlier_runs, entry.name
        written |= set(entry.writes)
