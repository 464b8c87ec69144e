"""Metrics, reference/generated-context evaluation, statistics and reports."""
