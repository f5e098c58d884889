"""The KL / CE evaluator of METHOD §4 and §8: patching, the conditions patched in, the summaries."""
