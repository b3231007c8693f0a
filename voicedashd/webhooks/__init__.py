"""Webhooks: signed POSTs of chosen call events, queued in the store and retried for 24 h."""

from .queue import WebhookOutbox
from .sender import serve_webhooks

__all__ = ["WebhookOutbox", "serve_webhooks"]
