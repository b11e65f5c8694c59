"""Evaluation harness: metrics, systems (CLaRa and baselines), the runner and its reports."""
