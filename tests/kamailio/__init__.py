"""Kamailio as the PBX-side proxy in the integration tests."""
