"""engine.connectors.mllp.framing: byte-level framing and stream decoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.connectors.mllp.framing import END, START, MllpDecoder, frame
from engine.errors import FrameError
from tests.unit.hl7_samples import ADT_A01_23, ORU_R01_25

PAYLOADS = [ORU_R01_25, ADT_A01_23, b"MSH|^~\\&|A|B\rMSA|AA|1\r"]
STREAM = b"".join(frame(p) for p in PAYLOADS)


def test_frame() -> None:
    assert frame(b"MSH|x\r") == b"\x0bMSH|x\r\x1c\x0d"
    assert frame(b"") == START + END


@pytest.mark.parametrize("payload", [b"a\x0bb", b"a\x1cb", b"a\x1c\x0d"])
def test_frame_refuses_block_characters(payload: bytes) -> None:
    with pytest.raises(FrameError, match="block character"):
        frame(payload)


def test_one_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(frame(ORU_R01_25)) == [ORU_R01_25]
    assert (decoder.pending, decoder.junk_bytes) == (0, 0)


def test_junk_before_start_is_discarded_and_counted() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\r\nGET / HTTP/1.0\r\n" + frame(b"A")) == [b"A"]
    assert decoder.junk_bytes == 18
    assert decoder.feed(b"\n\x1c\r") == []  # bytes between frames, a stray end block included
    assert decoder.junk_bytes == 21
    assert decoder.feed(b"x" + frame(b"B") + b"yz") == [b"B"]
    assert decoder.junk_bytes == 24


def test_coalesced_frames() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(STREAM) == PAYLOADS
    assert decoder.pending == 0


def test_split_at_every_offset() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = MllpDecoder()
        first = decoder.feed(STREAM[:cut])
        second = decoder.feed(STREAM[cut:])
        assert first + second == PAYLOADS, cut
        assert decoder.pending == 0


def test_byte_by_byte() -> None:
    decoder = MllpDecoder()
    out: list[bytes] = []
    for i in range(len(STREAM)):
        out += decoder.feed(STREAM[i : i + 1])
    assert out == PAYLOADS


def test_pending_counts_the_incomplete_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"junk\x0bMSH|") == []
    assert decoder.pending == 4
    assert decoder.feed(b"A\x1c") == []
    assert decoder.pending == 6  # "MSH|A" and the 0x1C waiting for its 0x0D
    assert decoder.feed(b"\x0d") == [b"MSH|A"]
    assert decoder.pending == 0


def test_empty_frame() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0b\x1c\x0d") == [b""]
    assert decoder.feed(b"\x0b") == []
    assert decoder.feed(b"\x1c") == []
    assert decoder.feed(b"\x0d") == [b""]


def test_oversized_frame_fails_before_its_end() -> None:
    decoder = MllpDecoder(max_frame_bytes=10)
    assert decoder.feed(b"\x0b0123456789") == []  # exactly at the bound: fine
    with pytest.raises(FrameError, match="frame exceeds 10 bytes"):
        decoder.feed(b"X")  # no end block seen yet
    assert decoder.pending == 0


def test_frame_at_the_bound_is_accepted() -> None:
    decoder = MllpDecoder(max_frame_bytes=10)
    assert decoder.feed(frame(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameError, match="frame exceeds 10 bytes"):
        decoder.feed(frame(b"0123456789A"))


def test_oversized_in_one_piece() -> None:
    decoder = MllpDecoder(max_frame_bytes=1000)
    with pytest.raises(FrameError, match="frame exceeds 1000 bytes"):
        decoder.feed(b"\x0b" + b"x" * 5000)


def test_start_block_inside_a_frame() -> None:
    decoder = MllpDecoder()
    with pytest.raises(FrameError, match="start block 0x0B inside a frame"):
        decoder.feed(b"\x0bMSH|A\x0bMSH|B\x1c\x0d")
    decoder = MllpDecoder()
    decoder.feed(b"\x0bMSH|A")
    with pytest.raises(FrameError, match="start block 0x0B inside a frame"):
        decoder.feed(b"\x0b")


@pytest.mark.parametrize("pieces", [[b"\x0bA\x1cB\x0d"], [b"\x0bA\x1c", b"B"], [b"\x0bA\x1c", b"\x1c\x0d"]])
def test_end_block_without_carriage_return(pieces: list[bytes]) -> None:
    decoder = MllpDecoder()
    with pytest.raises(FrameError, match="0x1C not followed by 0x0D"):
        for piece in pieces:
            decoder.feed(piece)


def test_decoder_restarts_cleanly_after_an_error() -> None:
    decoder = MllpDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"\x0bA\x1cX")
    assert decoder.pending == 0
    assert decoder.feed(frame(b"B")) == [b"B"]


def test_long_frame_in_many_pieces_is_linear() -> None:
    payload = b"OBX|1|ST|X||" + b"y" * 2_000_000 + b"\r"
    data = frame(payload)
    decoder = MllpDecoder()
    out: list[bytes] = []
    for i in range(0, len(data), 1024):
        out += decoder.feed(data[i : i + 1024])
    assert out == [payload]


_payload = st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_junk = st.binary(max_size=10).map(lambda b: b.replace(b"\x0b", b""))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_junk, _payload), max_size=8), st.data())
def test_any_payloads_split_anywhere(frames: list[tuple[bytes, bytes]], data: st.DataObject) -> None:
    stream = b"".join(junk + frame(payload) for junk, payload in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = MllpDecoder()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert out == [payload for _, payload in frames]
    assert decoder.junk_bytes == sum(len(junk) for junk, _ in frames)
    assert decoder.pending == 0
