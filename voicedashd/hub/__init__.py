"""The live-event WebSocket hub."""
