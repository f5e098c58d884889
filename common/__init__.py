"""Shared building blocks of the feature-integration pipeline; numbered scripts only parse flags and call these."""
