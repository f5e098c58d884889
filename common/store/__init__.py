"""Crash-safe bytes on disk: savers per format, checked reads, stage directories and their format upgrade,
fingerprints, the output-directory lock."""
