"""The Quart-Trio HTTP API: REST, dashboard page, health and metrics."""
