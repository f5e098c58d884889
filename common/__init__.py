"""The pipeline's shared pieces. "METHOD §N" in their docstrings and comments is section N of docs/METHOD.md."""
