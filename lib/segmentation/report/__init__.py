"""Report: one self-contained HTML page about a run (entry: `stage.run`; `render` builds the page from
small aggregate rows, without Spark)."""
