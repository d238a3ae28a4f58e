"""The report as a reader sees it: on a copy of the shared lake, a planted new behaviour group arrives,
`segment assign` scores it (drift fires), the model is refitted (the group gets its own segment), and
the page of the `report` stage is opened in headless Chromium (Debian's, driven by Playwright): every
section is there and visible, every image decodes, nothing is logged as an error or fetched from the
network, nothing is wider than a 1400-pixel window. The screenshots are the test's artifacts
(test-artifacts/, or $SEGMENTATION_TEST_ARTIFACTS); README's docs/report.png is the top one."""

import os
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from segmentation.pipeline import run_stage
from segmentation.report.render import SECTIONS
from tests.conftest import REPO
from tests.integration.segment_checks import planted_group, raw_kmeans_copy

CHROMIUM = os.environ.get("SEGMENTATION_CHROMIUM", "/usr/bin/chromium")
# Flags for a closed network: without the background-networking ones Chromium keeps dialling Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("SEGMENTATION_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="module")
def report_after_refit(spark, lake, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refit")
    cfg, store = raw_kmeans_copy(spark, lake, root, extra_k=1)
    top = store.read("events_silver").groupBy("category", "device").count().orderBy(F.desc("count")).head()
    planted_group(root / "day2", top.category, top.device)
    run_stage(spark, cfg, "ingest", "day2")
    assert run_stage(spark, cfg, "assign", "day2-assign").drifted
    for stage in ("features", "embed", "cluster"):
        run_stage(spark, cfg, stage, "refit")
    return Path(run_stage(spark, cfg, "report", "refit").path)


def _browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (as root)")
    from playwright.sync_api import sync_playwright

    return sync_playwright()


@pytest.mark.slow
def test_the_report_reads_in_a_browser_with_every_section_and_no_error(report_after_refit):
    page_text = report_after_refit.read_text()
    assert "http://" not in page_text and "https://" not in page_text  # nothing to fetch: works offline
    with _browser() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems, requests = [], []
        page.on(
            "console",
            lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report_after_refit.as_uri(), wait_until="load")

        for name in SECTIONS:
            section = page.locator(f"section#{name}")
            assert section.is_visible(), name
            assert len(section.inner_text()) > 40, name
        # the refit: cards for every segment, movement from the previous model, the assign's drift
        cards = page.locator(".card").count()
        assert cards >= 3
        assert "kept their segment" in page.locator("section#movement").inner_text()
        drift = page.locator("section#drift").inner_text()
        assert "day2-assign" in drift and "refit" in drift
        assert page.locator("section#rules").is_visible()
        images = page.evaluate("[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert {alt for alt, _ in images} >= {"k choice", "segment map", "drift over time"}
        assert all(ok for _, ok in images), images
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # nothing off-screen
        assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
        assert problems == []

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        page.screenshot(path=str(ARTIFACTS / "report-top.png"))
        browser.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000
