"""Assign: users with events after the current segmenter's snapshot → their user_segments rows, scored
as the fit scored its users, without retraining (entry: `stage.run`)."""
