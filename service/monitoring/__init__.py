"""Watching served models: a sample of what /predict receives kept for review (capture), and
whether what a model is sent drifts away from what it learnt from (drift)."""
