"""Errors that stop the daemon at start-up with one line naming the setting."""


class ListenerError(Exception):
    """A listener could not start; the message names the setting and the cause."""
