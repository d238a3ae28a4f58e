"""The quality lab's family of worlds (tools/generate/worlds.py)."""

import json

import numpy as np
import pytest

from segmentation.config import InputConfig
from segmentation.tools.generate import worlds

SEEDS = range(1000, 1040)


def test_worlds_span_the_family_and_repeat_by_seed():
    drawn = [worlds.draw_world(seed) for seed in SEEDS]
    assert {w.kind for w in drawn} == {"profile", "sequence"}
    assert all(3 <= w.k <= 12 for w in drawn)
    assert all(0.009 <= min(w.shares) <= 0.051 and abs(sum(w.shares) - 1) < 1e-9 for w in drawn)
    assert len({repr(w.schema) for w in drawn}) > 20  # schemas vary from world to world
    assert worlds.draw_world(1003) == worlds.draw_world(1003)


@pytest.mark.parametrize("seed", [1000, 1001, 1002, 1004])
def test_a_world_is_readable_through_its_own_input_config(seed):
    world = worlds.draw_world(seed, users=500)
    lines, truth = worlds.generate(world)
    settings = world.input_config("unused")
    InputConfig(**{k: v for k, v in settings.items()}).validate()
    first = json.loads(lines[0])
    for field in ("user_id", "event_time", "event_type"):  # the others are optional per event
        source = settings["mapping"][field]
        node = first
        for part in source.split("."):
            assert part in node, f"{source} missing from {first}"
            node = node[part]
    assert sorted(truth["user_id"]) == sorted(set(truth["user_id"]))
    assert truth["segment"].nunique() <= world.k


def test_sequence_worlds_plant_the_same_event_mix_in_every_segment():
    seed = next(s for s in SEEDS if worlds.draw_world(s).kind == "sequence")
    world = worlds.draw_world(seed, users=1500)
    lines, truth = worlds.generate(world)
    field = world.schema.type.split(".")
    user_field = world.schema.user.split(".")

    def get(record, path):
        for part in path:
            record = record[part]
        return record

    buying = {world.schema.vocabulary["cart"], world.schema.vocabulary["purchase"]}
    share = {}
    for line in lines:
        record = json.loads(line)
        user = get(record, user_field)
        hits, total = share.get(user, (0, 0))
        share[user] = (hits + (get(record, field) in buying), total + 1)
    by_segment = truth.assign(share=[share[u][0] / share[u][1] for u in truth["user_id"]])
    means = by_segment.groupby("segment")["share"].mean()
    assert np.ptp(means.to_numpy()) < 0.03
