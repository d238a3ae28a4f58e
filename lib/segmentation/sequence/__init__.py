"""Sequence: events_silver → user_sequences and user_sequence_embeddings (entry: `stage.run`).

`tokens` turns each user's last events into integer tokens (pure); the encoder and its contrastive
objective live with the other models in `segmentation.train`, so one training loop runs them all.
"""
