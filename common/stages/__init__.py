"""Orchestration: how a stage opens and finishes, the trained-stage runner, the KL and behavioral stages, the pipeline,
launching, run records."""
