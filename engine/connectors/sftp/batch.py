"""HL7 v2 batch files (FHS/BHS ... BTS/FTS) split into messages, incrementally. No I/O.

`Hl7Splitter.feed(chunk)` returns the messages completed by that chunk, so a file of any size
is split in constant memory (one message at a time). Segments may end with CR, LF or CRLF in a
file; each message is returned with CR-terminated segments, as HL7 defines them.

Contracts:
- A message is complete when the next MSH, a BTS/FTS/BHS trailer or header, or the end of
  the file follows it. A file that opened a batch (FHS/BHS) but ends without its trailer
  (BTS/FTS) is truncated: its last message is never returned and `close()` raises ParseError.
- BTS-1 (batch message count), when given, must equal the messages of that batch.
- A plain file of one or more MSH messages (no FHS/BHS) is split the same way.
- Anything but FHS/BHS before the first MSH, or a message larger than `max_message_bytes`,
  raises ParseError naming the line.
"""

from __future__ import annotations

import re

from engine.errors import ParseError

_LINE_END = re.compile(rb"\r\n|\r|\n")


class Hl7Splitter:
    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.messages = 0
        self._tail = b""
        self._segments: list[bytes] = []
        self._size = 0
        self._line = 0
        self._open: list[bytes] = []  # FHS / BHS not yet closed by FTS / BTS
        self._in_batch = 0  # messages since the last BHS

    def feed(self, chunk: bytes) -> list[bytes]:
        """The messages completed by `chunk`."""
        lines = _LINE_END.split(self._tail + chunk)
        self._tail = lines.pop()
        if len(self._tail) > self.max_message_bytes:
            raise ParseError(f"line {self._line + 1} is longer than {self.max_message_bytes} bytes")
        done: list[bytes] = []
        for line in lines:
            self._line += 1
            if line:
                self._segment(line, done)
        return done

    def close(self) -> list[bytes]:
        """The last message; raises ParseError when the file is truncated or inconsistent."""
        done = self.feed(b"\r") if self._tail else []
        if self._open:
            names = " and ".join(seg.decode() for seg in self._open)
            trailer = "FTS" if self._open[0] == b"FHS" else "BTS"
            raise ParseError(f"truncated batch: {names} opened but the file ends without {trailer} "
                             f"after {self.messages + len(done)} complete message(s)")
        if self._segments:
            done.append(self._emit())
        if not self.messages and not done:
            raise ParseError("no MSH segment: the file holds no HL7 message")
        return done

    def _segment(self, line: bytes, done: list[bytes]) -> None:
        tag = line[:3]
        if tag == b"MSH":
            self._flush(done)
            self._segments = [line]
            self._size = len(line) + 1
        elif tag in (b"FHS", b"BHS", b"BTS", b"FTS"):
            self._flush(done)
            self._envelope(tag, line)
        elif not self._segments:
            raise ParseError(f"line {self._line}: segment {_name(tag)} before the first MSH")
        else:
            self._size += len(line) + 1
            if self._size > self.max_message_bytes:
                raise ParseError(f"line {self._line}: message larger than {self.max_message_bytes} bytes")
            self._segments.append(line)

    def _flush(self, done: list[bytes]) -> None:
        if self._segments:
            done.append(self._emit())

    def _emit(self) -> bytes:
        message = b"\r".join(self._segments) + b"\r"
        self._segments = []
        self.messages += 1
        self._in_batch += 1
        return message

    def _envelope(self, tag: bytes, line: bytes) -> None:
        if tag in (b"FHS", b"BHS"):
            self._open.append(tag)
            self._in_batch = 0 if tag == b"BHS" else self._in_batch
            return
        opener = b"BHS" if tag == b"BTS" else b"FHS"
        if not self._open or self._open[-1] != opener:
            raise ParseError(f"line {self._line}: {tag.decode()} without a matching {opener.decode()}")
        self._open.pop()
        if tag == b"BTS":
            self._check_count(line)

    def _check_count(self, line: bytes) -> None:
        fields = line.split(line[3:4]) if len(line) > 3 else []
        declared = fields[1].strip() if len(fields) > 1 else b""
        if declared.isdigit() and int(declared) != self._in_batch:
            raise ParseError(f"line {self._line}: BTS-1 declares {int(declared)} message(s), "
                             f"the batch holds {self._in_batch}")


def _name(tag: bytes) -> str:
    text = tag.decode("ascii", "replace")
    return text if text.isalnum() else "(not a segment)"
