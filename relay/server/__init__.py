"""The aiohttp application: inbound endpoints, the admin API, health and metrics, and wiring."""
