"""REPORT.html and the feature dashboards (METHOD §15): self-contained pages built from the run folder's files."""
