"""Errors that stop the daemon at start-up with one line naming the setting; resource errnos."""

import errno

# The process or the system is out of something a socket needs (descriptors, buffers, memory):
# worth waiting out, never the fault of one port, peer or call.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ListenerError(Exception):
    """A listener could not start; the message names the setting and the cause."""
