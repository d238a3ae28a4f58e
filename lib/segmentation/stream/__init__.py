"""Stage `stream`: Structured Streaming from the raw input folder through ingest and assign."""
