"""Cluster: embeddings and features → segments (entry: `stage.run`).

`fit` fits and applies MLlib clusterers (`kmeans` adds the sampled k-means++ start), `metrics` computes
partition statistics in one pass, `evaluate` scores a partition, `selection` picks one by the
configured rule, `profiles` describes the segments.
"""
