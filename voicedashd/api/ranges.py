"""HTTP Range requests (RFC 9110 §14) for one file: which bytes to send, as a pure decision."""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_range_header


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes start..stop-1 of a file of size bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        """How many bytes."""
        return self.stop - self.start

    def content_range(self) -> str:
        """The Content-Range header of a 206 answer."""
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


class Unsatisfiable(Exception):
    """No byte of the range lies in the file (416, Content-Range: bytes */size)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the range lies beyond the file's {size} bytes")
        self.size = size

    def content_range(self) -> str:
        """The Content-Range header of the 416 answer."""
        return f"bytes */{self.size}"


def requested_range(header: str | None, size: int, *, if_range: str | None = None,
                    etag: str | None = None) -> ByteRange | None:
    """The one byte range to send, or None for the whole file; Unsatisfiable for a 416.

    A Range that cannot be parsed, names other units or several ranges, or comes with an
    If-Range that is not the file's current ETag is ignored (the whole file: RFC 9110 allows
    it, and players ask for one range).
    """
    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    if if_range is not None and if_range.strip() != etag:
        return None
    start, stop = parsed.ranges[0]
    if stop is None:
        if start < 0:  # the last -start bytes, or all of a shorter file
            start = max(0, size + start)
        stop = size
    stop = min(stop, size)
    if start >= size or start >= stop:
        raise Unsatisfiable(size)
    return ByteRange(start, stop, size)
