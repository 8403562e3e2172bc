"""Metrics and analyses of trained cohorts."""
