"""Embed: user_features → user_embeddings (entry: `stage.run`); `encoder` applies the trained model
to Arrow batches inside Spark tasks (pure functions)."""
