"""Evaluation: backends that generate, tasks that score, and reports that summarise."""
