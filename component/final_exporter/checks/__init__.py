"""The serving checks: SavedModel inspection, smoke test, prediction parity, warmup."""
