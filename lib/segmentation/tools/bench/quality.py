"""The quality lab (`segment bench --quality`): how well each way of choosing k and the representation
recovers planted segments, over many worlds the product was never tuned on.

Each world comes from the generator family of tools/generate/worlds.py. Its logs go through the
product's own stages (ingest with the world's mapping, features, autoencoder training through
TorchDistributor, embedding); then, on a bounded sample of users (`clustering.selection_sample_rows`,
every user of these small worlds), `cluster/kselect.py` computes the evidence of every k on both
representations, and every selection method is one function of that evidence. Per method the lab
reports ARI against the planted segments, the oracle gap (the best ARI any candidate partition of the
world reached, minus the method's), |k chosen - k planted| and time.

Seeds: `TUNING_SEEDS` are for development; the reported figures come only from `held_out_seeds`, which
no default was tuned on. Results: one JSON line per world (a rerun skips worlds already measured),
then docs/quality.md and a plot beside it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from segmentation.arrays import list_column_matrix
from segmentation.artifacts import atomic_write_text
from segmentation.cluster import kselect
from segmentation.cluster.density import NOISE, fit_density
from segmentation.cluster.kmeans import users_sample
from segmentation.config import Config, InputConfig
from segmentation.errors import StageError
from segmentation.pipeline import run_in_context
from segmentation.stage import StageContext
from segmentation.tables import USER_EMBEDDINGS, USER_FEATURES
from segmentation.tools.generate import worlds

log = logging.getLogger(__name__)

# seeds 1..10 draw only profile worlds; 11, 12, 15, 16 and 21 are the first sequence worlds after them
TUNING_SEEDS = (*range(1, 11), 11, 12, 15, 16, 21)
REPRESENTATIONS = ("raw", "embedding")
CROSS = ("silhouette_common", "stability")  # how a method picks between the representations' choices
STAGES = ("ingest", "features", "train", "embed", "sequence")
PRODUCT = "product default, end to end"  # the cluster stage as configured, MLlib fits over every user
ALL_FOUR = "all four representations, end to end"  # embedding, raw, idec and sequence all candidates
FOUR = ["embedding", "raw", "idec", "sequence"]
IDEC_ALONE = "idec at the embedding's k (kmeans)"  # the refined embedding's own k-means partition
SEQUENCE_ALONE = "sequence encoder, clusterboot k (kmeans)"
# Rows that know the planted segments: what no method can beat on the k-means candidates, and what
# knowing the planted (or the identifiable) k would give; they bound the goals, they are not methods.
BEST_CANDIDATE = "reference: best-ARI k-means candidate (knows the truth)"
PLANTED_K = "reference: planted k given, better representation (knows the truth)"
IDENTIFIABLE_K = "reference: identifiable k given, better representation (knows the truth)"
REFERENCES = (BEST_CANDIDATE, PLANTED_K, IDENTIFIABLE_K)
# A planted segment counts as identifiable when a classifier trained on the truth gets at least this
# share of its members back (segment_recall): most of them, so it exists apart from its neighbours.
IDENTIFIABLE_RECALL = 0.5
# Issue #18's goals for the shipped default on the held-out worlds.
ORACLE_RATIO_GOAL = 0.95
K_EXACT_GOAL = 0.80
K_WITHIN_1_GOAL = 0.95


def held_out_seeds(count: int) -> list[int]:
    return list(range(1000, 1000 + count))


def run(spark: SparkSession, cfg: Config, out: Path, seeds: Sequence[int]) -> dict:
    """Measure every world of `seeds` not yet in `out` (JSON lines), then summarise all of them into
    `out` with suffix .md and a plot. Returns the summary."""
    work = Path(cfg.bench.work_dir).resolve() / "quality"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {r["world"]["seed"] for r in read_results(out)}
    ks = list(range(2, cfg.bench.quality_max_k + 1))
    for i, seed in enumerate(seeds):
        if seed in done:
            continue
        world = worlds.draw_world(seed, cfg.bench.quality_users)
        log.info("quality: world %d/%d (seed %d): %s", i + 1, len(seeds), seed, world.describe())
        result = measure_world(spark, cfg, world, work / f"world_{seed}", ks)
        with out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    backfill_identifiability(spark, cfg, out, seeds, work)
    results = [with_references(r) for r in read_results(out) if r["world"]["seed"] in set(seeds)]
    summary = summarise(results)
    out.with_suffix(".md").write_text(markdown(summary, results, out))
    plot(summary, results, out.with_suffix(".png"))
    return summary


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def world_config(cfg: Config, world: worlds.World, root: Path, raw: Path, truth: Path) -> Config:
    settings = world.input_config(raw)
    return replace(
        cfg,
        storage=replace(cfg.storage, root=str(root / "lake"), artifacts=None, catalog=None, schema=None),
        input=replace(InputConfig(), **{k: v for k, v in settings.items() if k != "path"}, path=str(raw)),
        report=replace(cfg.report, path=str(root / "reports")),
        training=replace(cfg.training, tracking=False),
        clustering=replace(
            cfg.clustering, truth_path=str(truth), k=list(range(2, cfg.bench.quality_max_k + 1))
        ),
    )


def fresh_world(cfg: Config, world: worlds.World, root: Path) -> tuple[Config, Path]:
    """The world's logs and truth written under an emptied `root`: the config that runs the product on
    them, and the truth's directory."""
    shutil.rmtree(root, ignore_errors=True)
    raw, truth_dir = worlds.write(world, root)
    return world_config(cfg, world, root, raw, truth_dir), truth_dir


def measure_world(spark: SparkSession, cfg: Config, world: worlds.World, root: Path, ks: list[int]) -> dict:
    """The product's stages on one world, then every method's choice and its quality."""
    wcfg, truth_dir = fresh_world(cfg, world, root)
    four = replace(wcfg, clustering=replace(wcfg.clustering, candidates=FOUR))
    ctx = StageContext.create(spark, four)  # the sequence stage builds only for a sequence candidate
    seconds = {}
    for name in STAGES:
        started = time.perf_counter()
        run_in_context(ctx, name)
        seconds[name] = round(time.perf_counter() - started, 1)
    matrices, truth = sample(
        spark, ctx, truth_dir, wcfg.clustering.selection_sample_rows, wcfg.clustering.seed
    )
    recall = segment_recall(matrices["raw"], truth, wcfg.clustering.seed)
    evidence, candidates = {}, {}
    for rep in REPRESENTATIONS:
        started = time.perf_counter()
        evidence[rep] = kselect.evidence(matrices[rep], ks, kselect.K_RULES, wcfg.clustering.seed)
        seconds[f"evidence_{rep}"] = round(time.perf_counter() - started, 1)
        for e in evidence[rep]:
            candidates[(rep, e.k)] = {
                "ari": adjusted_rand(truth, e.labels),
                "silhouette_common": kselect.silhouette(matrices["raw"], e.labels, wcfg.clustering.seed),
                "min_share": float(np.bincount(e.labels).min() / len(e.labels)),
            }
    choices = {name: method(evidence, candidates, ks) for name, method in methods().items()}
    chosen = {
        name: {"representation": rep, "k": k, "ari": candidates[(rep, k)]["ari"]}
        for name, (rep, k) in choices.items()
    }
    for rep in REPRESENTATIONS:  # density segments: k is what HDBSCAN finds
        started = time.perf_counter()
        chosen[f"hdbscan/{rep}"] = density_choice(matrices[rep], truth, rep, wcfg.clustering)
        seconds[f"hdbscan_{rep}"] = round(time.perf_counter() - started, 1)
    # The product itself, end to end: evidence, MLlib fits, selection; as configured, and with all
    # four representations candidates.
    started = time.perf_counter()
    selected = run_in_context(StageContext.create(spark, wcfg, ctx.run_id), "cluster").selected
    seconds["cluster"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    every = run_in_context(ctx, "cluster")
    seconds["cluster_all_four"] = round(time.perf_counter() - started, 1)
    deep = {
        rep: next(e for e in every.evaluations if e.representation == rep and e.algorithm == "kmeans")
        for rep in ("idec", "sequence")
    }
    oracle = max(
        [c["ari"] for c in candidates.values()]
        + [chosen[f"hdbscan/{rep}"]["ari"] for rep in REPRESENTATIONS]
        + [e.ari_truth for e in deep.values()]
    )
    return {
        "world": world.describe(),
        "users_sampled": len(truth),
        "seconds": seconds,
        "oracle_ari": oracle,
        **identifiability(recall),
        "candidates": {f"{rep}:{k}": c for (rep, k), c in candidates.items()},
        "evidence": {
            rep: [
                {
                    "k": e.k,
                    "silhouette": e.silhouette,
                    "prediction_strength": e.prediction_strength,
                    "gap": e.gap,
                    "gap_se": e.gap_se,
                    "jaccard_min": e.jaccard_min,
                    "jaccard_mean": e.jaccard_mean,
                    # per segment: rules over the segments' stability replay from these
                    "jaccard": None if e.jaccard is None else list(e.jaccard),
                }
                for e in evidence[rep]
            ]
            for rep in REPRESENTATIONS
        },
        "choices": chosen
        | {
            PRODUCT: _product_choice(selected),
            ALL_FOUR: _product_choice(every.selected),
            IDEC_ALONE: _product_choice(deep["idec"].summary()),
            SEQUENCE_ALONE: _product_choice(deep["sequence"].summary()),
        },
    }


def _product_choice(selected: dict) -> dict:
    """A partition the cluster stage fitted, as the lab records a method's choice."""
    return {
        "representation": selected["representation"],
        "k": selected["k"],
        "ari": selected["ari_truth"],
        "algorithm": selected["algorithm"],
    }


def density_choice(x: np.ndarray, truth: np.ndarray, rep: str, cfg) -> dict:
    """HDBSCAN as the product fits it (cluster/density.py), noise as one more label in the ARI."""
    try:
        model = fit_density(x, cfg.min_segment_share, cfg.seed)
    except StageError:  # no dense region: every user is noise
        return {"representation": rep, "k": 0, "ari": 0.0, "noise_share": 1.0}
    labels = model.predict(x)
    return {
        "representation": rep,
        "k": model.k,
        "ari": adjusted_rand(truth, labels),
        "noise_share": float((labels == NOISE).mean()),
    }


def sample(
    spark: SparkSession,
    ctx: StageContext,
    truth_dir: Path,
    rows: int,
    seed: int,
    representations: Sequence[str] = REPRESENTATIONS,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The `representations` (raw, embedding) and the planted segment of a uniform sample of at most
    `rows` users."""
    truth = spark.read.json(str(truth_dir)).select("user_id", "segment")
    frame = (
        ctx.store.read(USER_FEATURES).select("user_id", F.col("features").alias("raw")).join(truth, "user_id")
    )
    if "embedding" in representations:
        frame = frame.join(ctx.store.read(USER_EMBEDDINGS).select("user_id", "embedding"), "user_id")
    table = users_sample(frame, rows, seed).toArrow()  # the users the cluster stage samples
    matrices = {rep: list_column_matrix(table.column(rep), np.float64) for rep in representations}
    _, labels = np.unique(table.column("segment").to_numpy(zero_copy_only=False), return_inverse=True)
    return matrices, labels


def segment_recall(x: np.ndarray, truth: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """Per planted segment (0..k-1 of `truth`), the share of its members that a linear classifier
    trained on the truth (multinomial logistic regression, `folds`-fold cross-validated) assigns back
    to it from `x`. k-means draws linear boundaries too, so a segment this classifier cannot tell apart
    is one no k rule can be expected to count. Unweighted on purpose: a small segment lying inside a
    large one is lost in it, and class weights would split that region by a coin toss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    sizes = np.bincount(truth)
    splits = int(min(folds, sizes.min()))
    if splits < 2:  # a segment of one user: nothing to cross-validate
        return np.where(sizes > 1, 1.0, 0.0)
    predicted = cross_val_predict(
        LogisticRegression(max_iter=2000),
        x,
        truth,
        cv=StratifiedKFold(splits, shuffle=True, random_state=seed),
    )
    return np.array([(predicted[truth == s] == s).mean() for s in range(len(sizes))])


def identifiability(recall: np.ndarray, floor: float = IDENTIFIABLE_RECALL) -> dict:
    """The planted segments the data can tell apart: `identifiable_k` counts those whose
    cross-validated recall (segment_recall) reaches `floor` (at least 1: the rest are absorbed)."""
    return {
        "segment_recall": [round(float(r), 4) for r in recall],
        "identifiable_k": max(1, int((recall >= floor).sum())),
    }


def backfill_identifiability(
    spark: SparkSession, cfg: Config, out: Path, seeds: Sequence[int], work: Path
) -> None:
    """Add `identifiable_k` to the worlds of `out` measured before the lab recorded it: the world's
    logs again through ingest and features only (its recall needs the raw features, not the models)."""
    results = read_results(out)
    missing = [r for r in results if r["world"]["seed"] in set(seeds) and "identifiable_k" not in r]
    if not missing:
        return
    for i, result in enumerate(missing):
        seed = result["world"]["seed"]
        world = worlds.draw_world(seed, result["world"]["users"])
        log.info("quality: identifiability of world %d/%d (seed %d)", i + 1, len(missing), seed)
        root = work / f"world_{seed}"
        wcfg, truth_dir = fresh_world(cfg, world, root)
        ctx = StageContext.create(spark, wcfg)
        for name in ("ingest", "features"):
            run_in_context(ctx, name)
        matrices, truth = sample(
            spark, ctx, truth_dir, wcfg.clustering.selection_sample_rows, wcfg.clustering.seed, ("raw",)
        )
        result.update(identifiability(segment_recall(matrices["raw"], truth, wcfg.clustering.seed)))
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in results))


def adjusted_rand(truth: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(truth, labels))


Method = Callable[[dict, dict, list[int]], tuple[str, int]]


def methods() -> dict[str, Method]:
    """Every selection method the lab compares: name -> (evidence, candidates, ks) -> (rep, k)."""
    table: dict[str, Method] = {"silhouette_common_sweep/embedding": _previous_default}
    for rule in kselect.K_RULES:
        for rep in REPRESENTATIONS:
            table[f"{rule}/{rep}"] = _one_representation(rule, rep)
        for cross in CROSS:
            table[f"{rule}/both:{cross}"] = _both(rule, cross)
    return table


def _previous_default(evidence: dict, candidates: dict, ks: list[int]) -> tuple[str, int]:
    """The rule before the lab: the embedding's k with the highest common-space silhouette among those
    whose smallest segment holds >= 2% of users."""
    allowed = [k for k in ks if candidates[("embedding", k)]["min_share"] >= 0.02] or ks
    return "embedding", max(allowed, key=lambda k: candidates[("embedding", k)]["silhouette_common"] or -1)


def _one_representation(rule: str, rep: str) -> Method:
    def choose(evidence: dict, candidates: dict, ks: list[int]) -> tuple[str, int]:
        return rep, kselect.choose(evidence[rep], rule, ks).k

    return choose


def _both(rule: str, cross: str) -> Method:
    def choose(evidence: dict, candidates: dict, ks: list[int]) -> tuple[str, int]:
        picks = {rep: kselect.choose(evidence[rep], rule, ks).k for rep in REPRESENTATIONS}

        def score(rep: str) -> float:
            if cross == "silhouette_common":
                return candidates[(rep, picks[rep])]["silhouette_common"] or -1.0
            figures = next(e for e in evidence[rep] if e.k == picks[rep])
            return figures.jaccard_mean

        best = max(REPRESENTATIONS, key=score)
        return best, picks[best]

    return choose


def with_references(result: dict) -> dict:
    """`result` with the reference rows (REFERENCES) added to its choices, derived from its k-means
    candidates: the one with the best ARI, and the better representation's at the planted k and at
    the identifiable k (each only where a candidate has that k)."""
    keyed = {(key.split(":")[0], int(key.split(":")[1])): c["ari"] for key, c in result["candidates"].items()}
    rep, k = max(keyed, key=keyed.get)
    choices = dict(result["choices"])
    choices[BEST_CANDIDATE] = {"representation": rep, "k": k, "ari": keyed[(rep, k)]}
    for name, given in ((PLANTED_K, result["world"]["k"]), (IDENTIFIABLE_K, result.get("identifiable_k"))):
        at_k = {r: a for (r, kk), a in keyed.items() if kk == given}
        if at_k:
            best = max(at_k, key=at_k.get)
            choices[name] = {"representation": best, "k": given, "ari": at_k[best]}
    return {**result, "choices": choices}


def summarise(results: list[dict]) -> dict:
    """Per method over the worlds that measured it: mean and median ARI, mean oracle gap and ratio, k
    exact and within 1, and the same split by world kind; plus the oracle's mean."""
    names = list(dict.fromkeys(name for r in results for name in r["choices"]))
    summary = {"worlds": len(results), "methods": {}}
    for name in names:
        measured = [r for r in results if name in r["choices"]]
        summary["methods"][name] = _figures(measured, name)
        for kind in ("profile", "sequence"):
            subset = [r for r in measured if r["world"]["kind"] == kind]
            if subset:
                summary["methods"][name][kind] = _figures(subset, name)
    for kind in ("profile", "sequence"):
        subset = [r["oracle_ari"] for r in results if r["world"]["kind"] == kind]
        summary[f"oracle_ari_mean_{kind}"] = float(np.mean(subset)) if subset else None
    summary["oracle_ari_mean"] = float(np.mean([r["oracle_ari"] for r in results])) if results else None
    summary["k_goal_ceiling"] = k_goal_ceiling(results, K_EXACT_GOAL)
    return summary


def k_goal_ceiling(results: list[dict], exact: float) -> float | None:
    """The highest ARI / oracle that a k rule knowing the truth could reach on `results` (with
    references) while choosing the planted k in at least `exact` of the worlds: the planted-k reference
    (the better k-means candidate at the planted k) in those worlds and the oracle partition in the rest,
    the rest being the worlds where the two differ most. Worlds with no candidate at the planted k are
    among the rest; None where they alone are more than the rest may hold (the share cannot be met)."""
    oracle = [r["oracle_ari"] for r in results]
    if not results or sum(oracle) <= 0:
        return None
    rest = len(results) - math.ceil(exact * len(results) - 1e-9)
    planted = [r["choices"].get(PLANTED_K, {}).get("ari") for r in results]
    missing = [o for o, a in zip(oracle, planted, strict=True) if a is None]
    if len(missing) > rest:
        return None
    gains = sorted((o - a for o, a in zip(oracle, planted, strict=True) if a is not None), reverse=True)
    at_planted = sum(a for a in planted if a is not None)
    return (at_planted + sum(missing) + sum(gains[: rest - len(missing)])) / sum(oracle)


def _figures(results: list[dict], name: str) -> dict:
    ari = np.array([r["choices"][name]["ari"] for r in results])
    oracle = np.array([r["oracle_ari"] for r in results])
    k_error = np.array([abs(r["choices"][name]["k"] - r["world"]["k"]) for r in results])
    identifiable = [r for r in results if "identifiable_k" in r]
    against = np.array([abs(r["choices"][name]["k"] - r["identifiable_k"]) for r in identifiable])
    return {
        # k against what the data can tell apart (segment_recall), over the worlds that recorded it
        "k_exact_identifiable": float((against == 0).mean()) if identifiable else None,
        "k_within_1_identifiable": float((against <= 1).mean()) if identifiable else None,
        "worlds": len(results),
        "ari_mean": float(ari.mean()),
        "ari_median": float(np.median(ari)),
        "oracle_gap_mean": float((oracle - ari).mean()),
        "oracle_ratio": float(ari.mean() / oracle.mean()) if oracle.mean() > 0 else None,
        "k_exact": float((k_error == 0).mean()),
        "k_within_1": float((k_error <= 1).mean()),
        "k_error_mean": float(k_error.mean()),
        "raw_chosen": float(np.mean([r["choices"][name]["representation"] == "raw" for r in results])),
    }


def method_table(summary: dict, kind: str | None = None) -> str:
    """One markdown row per method, best mean ARI first (over all worlds, or one `kind` of world)."""
    rows = []
    for name, figures in summary["methods"].items():
        f = figures if kind is None else figures.get(kind)
        if f:
            rows.append((name, f))
    rows.sort(key=lambda item: -item[1]["ari_mean"])
    lines = [
        "| method: k rule / representation | worlds | mean ARI | median ARI | oracle gap | ARI / oracle "
        "| k exact | k ±1 | mean abs k error | k exact / ±1 vs identifiable | raw chosen |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in rows:
        ratio = "n/a" if f["oracle_ratio"] is None else f"{f['oracle_ratio']:.3f}"
        identifiable = (
            "n/a"
            if f["k_exact_identifiable"] is None
            else f"{f['k_exact_identifiable']:.0%} / {f['k_within_1_identifiable']:.0%}"
        )
        lines.append(
            f"| {name} | {f['worlds']} | {f['ari_mean']:.3f} | {f['ari_median']:.3f} | {f['oracle_gap_mean']:.3f} "
            f"| {ratio} | {f['k_exact']:.0%} | {f['k_within_1']:.0%} | {f['k_error_mean']:.2f} | {identifiable} "
            f"| {f['raw_chosen']:.0%} |"
        )
    return "\n".join(lines)


def world_table(results: list[dict]) -> str:
    """One row per world: what it planted and what the product chose."""
    lines = [
        "| seed | kind | k planted | k identifiable | smallest share | separation | irrelevant | oracle ARI "
        "| product: rep, algorithm, k | product ARI |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: r["world"]["seed"]):
        w, p = r["world"], r["choices"].get(PRODUCT)
        product = f"{p['representation']}, {p.get('algorithm', '')}, {p['k']}" if p else "n/a"
        product_ari = f"{p['ari']:.3f}" if p else "n/a"
        lines.append(
            f"| {w['seed']} | {w['kind']} | {w['k']} | {r.get('identifiable_k', 'n/a')} "
            f"| {w['smallest_share']:.3f} | {w['separation']:.2f} "
            f"| {', '.join(w['irrelevant']) or '-'} | {r['oracle_ari']:.3f} | {product} | {product_ari} |"
        )
    return "\n".join(lines)


def goals(summary: dict) -> str:
    """The issue's targets for the shipped default, each met or missed."""
    product = summary["methods"].get(PRODUCT)
    if not product:
        return "## Goals\n\nThe product's own row is missing: no goal can be checked."
    rows = [
        (f"mean ARI >= {ORACLE_RATIO_GOAL} x the oracle's", product["oracle_ratio"], ORACLE_RATIO_GOAL),
        (f"k exact in >= {K_EXACT_GOAL:.0%} of worlds", product["k_exact"], K_EXACT_GOAL),
        (f"k within ±1 in >= {K_WITHIN_1_GOAL:.0%} of worlds", product["k_within_1"], K_WITHIN_1_GOAL),
    ]
    if product["k_exact_identifiable"] is not None:  # beside the goals, not one of them
        rows += [
            (
                "(beside them) k exact against the identifiable k",
                product["k_exact_identifiable"],
                K_EXACT_GOAL,
            ),
            (
                "(beside them) k within ±1 of the identifiable k",
                product["k_within_1_identifiable"],
                K_WITHIN_1_GOAL,
            ),
        ]
    lines = [
        "## Goals (the shipped default, all worlds)",
        "",
        "| goal | measured | met |",
        "| --- | --- | --- |",
    ]
    for goal, value, bound in rows:
        met = value is not None and value >= bound
        lines.append(
            f"| {goal} | {'n/a' if value is None else f'{value:.3f}'} | {'yes' if met else '**no**'} |"
        )
    best, planted = summary["methods"].get(BEST_CANDIDATE), summary["methods"].get(PLANTED_K)
    if best and planted:
        lines += [
            "",
            "What the truth itself allows on these worlds (the reference rows below know the planted "
            f"segments): the best-ARI k-means candidate has the planted k in {best['k_exact']:.0%} of "
            f"worlds and is within one of it in {best['k_within_1']:.0%}; k-means at the planted k, on "
            f"the better representation, reaches a mean ARI of {planted['ari_mean']:.3f} against "
            f"{best['ari_mean']:.3f} for the best candidate. Where the best partition has another k than "
            "the planted one, a rule cannot meet both the k goals and the ARI goal there.",
        ]
        ceiling = summary.get("k_goal_ceiling")
        if ceiling is not None:
            lines += [
                "",
                f"**The goals together**: a rule that knew the truth and chose the planted k in "
                f"{K_EXACT_GOAL:.0%} of these worlds (the better k-means partition at that k), and the "
                f"oracle's partition in the other worlds, where the two differ most, would reach at most "
                f"**{ceiling:.3f} x the oracle**"
                + (
                    f": below the ARI goal of {ORACLE_RATIO_GOAL}, so no k rule over these k-means candidates "
                    "meets the k exact goal and the ARI goal together on these worlds."
                    if ceiling < ORACLE_RATIO_GOAL
                    else f", so the k exact goal and the ARI goal of {ORACLE_RATIO_GOAL} can be met together."
                ),
            ]
        if best["k_exact_identifiable"] is not None:
            lines += [
                "",
                "**Identifiable k**: the planted segments that a linear classifier trained on the truth "
                f"(logistic regression on the scaled raw features, 5-fold cross-validated) gets at "
                f"least {IDENTIFIABLE_RECALL:.0%} of the members of back; if a classifier that knows the "
                "truth cannot draw the others, a partition with linear boundaries (k-means') can hardly "
                "find them. The best-ARI "
                f"candidate has the identifiable k in {best['k_exact_identifiable']:.0%} of worlds "
                f"(±1: {best['k_within_1_identifiable']:.0%}).",
            ]
    return "\n".join(lines)


def representations(results: list[dict]) -> str:
    """Per world kind: the best partition of each representation (its own oracle), how often the
    embedding's beats raw's, and by how much."""
    lines = [
        "## Embedding against raw features",
        "",
        "Best ARI any k reached on each representation (k-means), per kind of world.",
        "",
        "| worlds | n | best raw (mean) | best embedding (mean) | embedding better in | mean difference (embedding - raw) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("profile", "sequence", None):
        subset = [r for r in results if kind is None or r["world"]["kind"] == kind]
        if not subset:
            continue
        best = {
            rep: np.array(
                [
                    max(c["ari"] for key, c in r["candidates"].items() if key.startswith(f"{rep}:"))
                    for r in subset
                ]
            )
            for rep in REPRESENTATIONS
        }
        difference = best["embedding"] - best["raw"]
        lines.append(
            f"| {kind or 'all'} | {len(subset)} | {best['raw'].mean():.3f} | {best['embedding'].mean():.3f} "
            f"| {int((difference > 0.01).sum())} of {len(subset)} | {difference.mean():+.3f} |"
        )
    return "\n".join(lines) + "\n\n" + deep_representations(results)


def deep_representations(results: list[dict]) -> str:
    """Per world kind: the idec and sequence partitions (k-means at the k each was given or chose)
    against the embedding's and raw's at their clusterboot k, on the same worlds."""
    lines = [
        "## The deep representations at their own k",
        "",
        "ARI of k-means on each representation at the k it works at: raw and the embedding at their "
        "clusterboot k (on the evidence sample), idec at the embedding's k, sequence at its clusterboot k "
        "(both over every user); how often each deep one beats the better of raw and the embedding.",
        "",
        "| worlds | n | raw | embedding | idec | sequence | idec better in | sequence better in |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ("profile", "sequence", None):
        subset = [
            r for r in results if (kind is None or r["world"]["kind"] == kind) and IDEC_ALONE in r["choices"]
        ]
        if not subset:
            continue
        ari = {
            name: np.array([r["choices"][method]["ari"] for r in subset])
            for name, method in (
                ("raw", "clusterboot/raw"),
                ("embedding", "clusterboot/embedding"),
                ("idec", IDEC_ALONE),
                ("sequence", SEQUENCE_ALONE),
            )
        }
        shallow = np.maximum(ari["raw"], ari["embedding"])
        lines.append(
            f"| {kind or 'all'} | {len(subset)} | {ari['raw'].mean():.3f} | {ari['embedding'].mean():.3f} "
            f"| {ari['idec'].mean():.3f} | {ari['sequence'].mean():.3f} "
            f"| {int((ari['idec'] > shallow + 0.01).sum())} of {len(subset)} "
            f"| {int((ari['sequence'] > shallow + 0.01).sum())} of {len(subset)} |"
        )
    return "\n".join(lines)


def markdown(summary: dict, results: list[dict], out: Path) -> str:
    """The whole results page for the results file `out` (docs/quality.md is this page from the held-out
    seeds, docs/quality-tuning.md from the tuning seeds)."""
    seeds = sorted(r["world"]["seed"] for r in results)
    seconds = np.array([sum(r["seconds"].values()) for r in results]) if results else np.zeros(1)
    tuning = bool(seeds) and set(seeds) <= set(TUNING_SEEDS)
    parts = [
        "# Segment quality by evidence" + (" (tuning worlds)" if tuning else ""),
        "",
        f"Generated by `make {'quality-tuning' if tuning else 'quality'}` (`segment bench --quality "
        f"{'tuning' if tuning else 'held-out'} --out docs/{out.name}`) "
        "(lib/segmentation/tools/bench/quality.py); do not edit by hand.",
        "",
        f"**{summary['worlds']} worlds**, seeds {seeds[0] if seeds else '-'}..{seeds[-1] if seeds else '-'}, "
        "drawn from the generator family in lib/segmentation/tools/generate/worlds.py. "
        + (
            "These are the tuning seeds: defaults were chosen on them, so these figures flatter the product. "
            if tuning
            else "None of these seeds was used to tune a default (the tuning seeds are "
            f"{', '.join(map(str, TUNING_SEEDS))}); a default tuned there is switched on only by "
            "conditions on these figures written down before they are read (README). "
        )
        + "Each world runs through the product's own ingest, "
        "features, autoencoder training, embedding and sequence encoder; then every method below chooses a "
        "representation and k from the same evidence on the raw features and the embedding (k-means fits "
        f"on every user of the world). The row `{PRODUCT}` is the cluster stage itself with the shipped "
        f"defaults (MLlib fits over every user), `{ALL_FOUR}` the same with embedding, raw, idec and "
        f"sequence all candidates; `{IDEC_ALONE}` and `{SEQUENCE_ALONE}` are that run's k-means "
        "partitions of the two deep representations.",
        "",
        "- **ARI**: adjusted Rand index of the chosen partition against the planted segments.",
        "- **oracle**: the best ARI of any candidate partition of the world (raw or embedding at any k of "
        "2..max, hdbscan, idec and sequence at theirs); **oracle gap** = oracle - ARI, averaged; "
        "**ARI / oracle** = mean ARI / mean oracle ARI.",
        "- **k exact / k ±1**: share of worlds where the chosen k equals the planted k, or is within one.",
        f"- Mean oracle ARI: {summary['oracle_ari_mean']:.3f} over all worlds"
        + (
            f", {summary['oracle_ari_mean_profile']:.3f} on profile worlds"
            if summary.get("oracle_ari_mean_profile") is not None
            else ""
        )
        + (
            f", {summary['oracle_ari_mean_sequence']:.3f} on sequence worlds"
            if summary.get("oracle_ari_mean_sequence") is not None
            else ""
        )
        + f". Time per world: median {np.median(seconds):.0f} s on this machine (every stage included).",
        "",
        f"![ARI and k error per method]({out.with_suffix('.png').name})",
        "",
        goals(summary),
        "",
        "## All worlds",
        "",
        method_table(summary),
        "",
        "## Profile worlds (segments differ in what users do)",
        "",
        method_table(summary, "profile"),
        "",
        "## Sequence worlds (segments differ only in order and timing)",
        "",
        method_table(summary, "sequence"),
        "",
        representations(results),
        "",
        "## Every world",
        "",
        world_table(results),
        "",
    ]
    return "\n".join(parts)


def plot(summary: dict, results: list[dict], path: Path) -> None:
    """Per method (best mean ARI at the top): the ARI of its choice in every world, and its k error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(summary["methods"], key=lambda n: summary["methods"][n]["ari_mean"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.32 * len(names) + 2), sharey=True)
    ari = [[r["choices"][n]["ari"] for r in results if n in r["choices"]] for n in names]
    errors = [[r["choices"][n]["k"] - r["world"]["k"] for r in results if n in r["choices"]] for n in names]
    left.boxplot(ari, orientation="horizontal", tick_labels=names)
    left.set_xlabel(f"ARI against the planted segments ({len(results)} worlds)")
    right.boxplot(errors, orientation="horizontal", tick_labels=names)  # shared axis: the same labels
    right.tick_params(labelleft=False)
    right.axvline(0, color="grey", linewidth=0.8)
    right.set_xlabel("k chosen - k planted")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
