"""Deep user segmentation on Spark: raw behaviour logs to Delta segment tables."""

__version__ = "0.1.0"
