"""Features: events_silver → user_features (entry: `stage.run`).

`aggregates` builds the per-user behaviour columns from events (pure), `scaling` fits and applies the
scaling statistics, `dictionary` documents every feature.
"""
