"""MLLP framing: 0x0B + payload + 0x1C 0x0D, and an incremental decoder for a byte stream.

Pure (no I/O) and on the hot path: every byte received over MLLP goes through `feed`, once.
Each chunk is searched once with bytes.find (C speed); an incomplete frame is accumulated in a
bytearray, so a frame split over many reads costs O(total size), never O(n^2).
"""

from __future__ import annotations

from engine.errors import FrameError

START = b"\x0b"
END = b"\x1c\x0d"

_SB = 0x0B
_FS = 0x1C
_CR = 0x0D


def frame(payload: bytes) -> bytes:
    """`payload` wrapped in MLLP block characters.

    Raises FrameError if the payload contains 0x0B or 0x1C, which MLLP forbids inside a block
    (HL7 text escapes them as \\X0B\\ and \\X1C\\): the receiver would cut the message there.
    """
    if START in payload or b"\x1c" in payload:
        raise FrameError("payload contains an MLLP block character (0x0B or 0x1C)")
    return b"".join((START, payload, END))


class MllpDecoder:
    """Splits a byte stream into MLLP payloads.

    Bytes outside a frame (before 0x0B) are discarded and counted in `junk_bytes`. A frame may
    arrive in any number of pieces, several frames in one piece. FrameError is raised as soon as
    the stream breaks MLLP: a frame growing past `max_frame_bytes` (without waiting for its end),
    0x0B inside a frame, 0x1C not followed by 0x0D. Payloads completed earlier in the same `feed`
    call are lost with it: the caller closes the connection and the sender, which got no ACK for
    them, sends them again. After an error the decoder is reset (outside any frame).
    """

    __slots__ = ("_buf", "_in_frame", "_saw_fs", "junk_bytes", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = 10 * 1024 * 1024) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.junk_bytes = 0
        self._buf = bytearray()  # payload bytes of the incomplete frame
        self._in_frame = False
        self._saw_fs = False  # the last byte fed was a 0x1C that ends the frame if 0x0D follows

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete frame (payload so far, a trailing 0x1C included)."""
        return len(self._buf) + self._saw_fs

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by `data`, in order (possibly none)."""
        out: list[bytes] = []
        pos, n = 0, len(data)
        try:
            while pos < n:
                pos = self._in(data, pos, out) if self._in_frame else self._outside(data, pos)
        except FrameError:
            self._reset()
            raise
        return out

    def _outside(self, data: bytes, pos: int) -> int:
        """Skip junk up to the next start block; position after it (or the end)."""
        start = data.find(START, pos)
        if start < 0:
            self.junk_bytes += len(data) - pos
            return len(data)
        self.junk_bytes += start - pos
        self._in_frame = True
        return start + 1

    def _in(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """Consume frame bytes from `pos`; append the payload if the frame ends. New position."""
        if self._saw_fs:
            if data[pos] != _CR:
                raise FrameError(f"0x1C not followed by 0x0D (got 0x{data[pos]:02X})")
            self._complete(out, b"")
            return pos + 1
        fs = data.find(b"\x1c", pos)
        stop = len(data) if fs < 0 else fs
        if data.find(START, pos, stop) >= 0:
            raise FrameError("start block 0x0B inside a frame")
        if len(self._buf) + (stop - pos) > self.max_frame_bytes:
            raise FrameError(f"frame exceeds {self.max_frame_bytes} bytes")
        if fs < 0:
            self._buf += memoryview(data)[pos:]
            return stop
        if fs + 1 == len(data):  # 0x1C at the end of this piece: wait for the next byte
            self._buf += memoryview(data)[pos:fs]
            self._saw_fs = True
            return fs + 1
        if data[fs + 1] != _CR:
            raise FrameError(f"0x1C not followed by 0x0D (got 0x{data[fs + 1]:02X})")
        self._complete(out, data[pos:fs])
        return fs + 2

    def _complete(self, out: list[bytes], tail: bytes) -> None:
        if self._buf:
            self._buf += tail
            out.append(bytes(self._buf))
        else:
            out.append(tail)  # whole frame in one piece: no copy through the buffer
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._saw_fs = False
