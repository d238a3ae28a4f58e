"""Drift's binning in Spark against numpy's: a value's bin is how many cuts lie strictly below it."""

import math

import numpy as np
import pytest

from segmentation.assign.drift import histograms

pytestmark = pytest.mark.spark


def test_each_value_falls_in_the_bin_numpy_puts_it_in(spark):
    cuts = {
        "a": [-1.5, 0.0, 1e-05, 2.5, 1e300],
        "b`q": [0.1, 0.2],  # a column name SQL must quote
        "c": [],  # a constant feature: one bin
    }
    values = [-2.0, -1.5, -1.0, 0.0, 5e-06, 1e-05, 0.1, 0.2, 2.5, 3.0, math.inf, -math.inf, math.nan]
    rows = [(v, v, v) for v in values] + [(None, None, None)]
    frame = spark.createDataFrame(rows, "a double, `b``q` double, c double")
    counts = histograms(frame, cuts)
    for name, cut in cuts.items():
        finite = [v for v in values if not math.isnan(v)]
        expected = np.bincount(np.searchsorted(cut, finite, side="left"), minlength=len(cut) + 1)
        expected[len(cut)] += 1  # NaN sorts above every double in Spark
        expected[0] += 1  # null: bin 0
        assert counts[name].tolist() == expected.tolist(), name
