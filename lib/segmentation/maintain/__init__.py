"""Maintain: nightly upkeep of the product's Delta tables (entry: `stage.run`)."""
