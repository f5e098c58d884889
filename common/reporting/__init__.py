"""What a person reads: REPORT.md and its rows, the study's plan, questions and report."""
