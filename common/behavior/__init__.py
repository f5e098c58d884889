"""Behavioral validation (METHOD §10): the pipeline and its clamp, the stimuli, the 2×2 statistics, feature screens,
the logit test."""
