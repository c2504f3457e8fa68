"""Observability: log setup and formatting, Prometheus metrics."""
