"""Delivery: workers that claim due deliveries, send them through one HTTP seam, and record."""
