"""Temporal activities: every side effect of the workflow, each safe to retry."""
