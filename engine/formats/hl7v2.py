"""HL7 v2: header reading, charset decoding, lazy field access, escapes and ACK building.

Hand-written on purpose, and kept on the hot path: python-hl7 takes about 0.7 ms and hl7apy about
16 ms to parse a 16-segment ORU^R01, while splitting the same message takes about 5 µs. The engine
must ingest 12,000 messages/s on 2 cores, so reading the header and building the ACK of a message
must cost a few microseconds. Hence: `read_header` looks at the first segment only, `Hl7Message`
splits a segment into fields only when one of its fields is read, and nothing here does I/O.

Contracts in short:
- `read_header(raw)` never needs the body to be decodable; `decode`/`parse`/`read_header` raise
  nothing but `ParseError`, whatever the bytes.
- Paths are `SEG[n]-F[r].C.S` (see `Hl7Message.get`); a malformed path is a `ValueError`.
- Values read are unescaped when they are leaves; values written are escaped.
- `build_ack` always produces bytes (unencodable characters are replaced), for any `Header`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

from engine.errors import Finding, ParseError

__all__ = [
    "ACK_CODES",
    "CHARSETS",
    "DEFAULT_CODEC",
    "SUPPORTED_VERSIONS",
    "TABLE_0357",
    "Header",
    "Hl7Message",
    "build_ack",
    "codec_for",
    "decode",
    "escape",
    "hl7_timestamp",
    "new_control_id",
    "parse",
    "read_header",
    "unescape",
]

# HL7 table 0211 (MSH-18) value -> Python codec, plus spellings met in the field (DICOM-style
# "ISO IR100", Windows code page). Keys are upper case; lookups strip and upper-case the value.
# UTF-16/UTF-32 are absent on purpose: such a message has no ASCII "MSH" to find, so a declared
# UTF-16 on a readable header is a lie and must be refused ("unsupported character set").
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
}

SUPPORTED_VERSIONS: frozenset[str] = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)

# HL7 table 0357 (message error condition codes) used in ERR-3 / ERR-1.4.
TABLE_0357: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

ACK_CODES: frozenset[str] = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})

DEFAULT_CODEC = "utf-8"  # used when MSH-18 is empty and no default is configured

# A separator the message does not declare (2-character MSH-2) is represented by "\r": segment
# text never contains "\r" (it is the segment terminator), so `sep in value` is simply False.
_ABSENT = "\r"
_NONE: list[int] = []  # shared "no segment" answer of Hl7Message._occurrences, never mutated


# --------------------------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The MSH fields a router needs ('' when absent).

    MSH-3..6 (`sending_app` ... `receiving_facility`) and `message_type` (MSH-9) are the field
    text as received, still encoded and with their components ("LAB^1.2.3^ISO"), so that an ACK
    can swap them verbatim. The other values are unescaped: MSH-9.1/.2/.3, MSH-10, the first
    component of MSH-7, MSH-11 and MSH-12, MSH-15, MSH-16. `charset` is MSH-18's first
    repetition as written.
    """

    field_sep: str
    encoding_chars: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    timestamp: str
    message_type: str
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack: str
    app_ack: str
    charset: str

    @property
    def enhanced(self) -> bool:
        """True when the sender asked for enhanced acknowledgement (MSH-15 or MSH-16 set)."""
        return bool(self.accept_ack or self.app_ack)

    @property
    def sender(self) -> str:
        """De-duplication key of the sending system: MSH-3 and MSH-4 as received."""
        return f"{self.sending_app}|{self.sending_facility}"


_LEAD = re.compile(rb"[ \t\r\n]*(?:\xef\xbb\xbf[ \t\r\n]*)?")  # whitespace, a UTF-8 BOM


def _lead(raw: bytes) -> int:
    """Offset of the first byte after leading whitespace and a UTF-8 byte order mark."""
    if raw[:3] == b"MSH":
        return 0
    m = _LEAD.match(raw)
    return m.end() if m else 0


def _msh_span(raw: bytes) -> tuple[int, int]:
    """(start, end) of the MSH segment: it ends at the first \\r or \\n, or at end of data."""
    start = _lead(raw)
    if raw[start : start + 3] != b"MSH":
        raise ParseError("no MSH segment at start")
    end = raw.find(b"\r", start)
    if end < 0:
        end = len(raw)
    nl = raw.find(b"\n", start, end)
    return start, (end if nl < 0 else nl)


def _valid_delimiter(c: str) -> bool:
    return c.isascii() and c.isprintable() and not c.isalnum() and not c.isspace()


_VALID_ENCODINGS: set[tuple[str, str]] = {("|", "^~\\&"), ("|", "^~\\&#")}


def _check_encoding(sep: str, enc: str) -> None:
    """MSH-2: 2 to 5 distinct delimiters, none of them the field separator."""
    if (sep, enc) in _VALID_ENCODINGS:
        return
    if not enc:
        raise ParseError("MSH-2 encoding characters missing")
    if not (2 <= len(enc) <= 5 and len(set(enc)) == len(enc) and sep not in enc) or not all(
        _valid_delimiter(c) for c in enc
    ):
        raise ParseError(f"MSH-2 encoding characters {enc!r} are not valid")
    if len(_VALID_ENCODINGS) < 64:
        _VALID_ENCODINGS.add((sep, enc))


def _msh_fields(text: str) -> list[str]:
    """Split MSH text so that MSH-n is `fields[n]` (fields[1] is the separator, [2] MSH-2)."""
    sep = text[3:4]
    if sep != "|":
        if not sep:
            raise ParseError("MSH-1 field separator missing")
        if not _valid_delimiter(sep):
            raise ParseError(f"MSH-1 field separator {sep!r} is not valid")
    fields = text.split(sep)
    if (sep, fields[1]) not in _VALID_ENCODINGS:
        _check_encoding(sep, fields[1])
    fields.insert(1, sep)
    return fields


# A frozen dataclass's __init__ sets each field through object.__setattr__: ~2 µs for 17 fields,
# a third of read_header. `_new_header` fills a mutable twin with the same slots instead (0.4 µs)
# and then switches its class to Header, which Python allows for identical slot layouts. The
# result is an ordinary, frozen Header (equality, hash, repr, FrozenInstanceError on assignment).
_HeaderTwin = dataclasses.make_dataclass(
    "_HeaderTwin", [f.name for f in dataclasses.fields(Header)], slots=True
)
_UNESCAPED = (6, 8, 9, 10, 11, 12, 13, 14, 15)  # Header positions holding leaf values


def _new_header(*values: str) -> Header:
    header = _HeaderTwin(*values)
    header.__class__ = Header
    return cast(Header, header)


def _first(value: str, delimiter: str) -> str:
    return value.split(delimiter, 1)[0] if delimiter in value else value


def _make_header(msh: list[str], text: str) -> Header:
    """Header from MSH fields laid out by `_msh_fields`; `text` is the MSH segment text."""
    f = msh if len(msh) >= 19 else msh + [""] * (19 - len(msh))
    sep, enc = f[1], f[2]
    comp = enc[0]
    mtype = f[9]
    if comp in mtype:
        parts = mtype.split(comp, 3)
        code, trigger, structure = (parts[0], parts[1], parts[2] if len(parts) > 2 else "")
    else:
        code, trigger, structure = mtype, "", ""
    values = [
        sep, enc, f[3], f[4], f[5], f[6], _first(f[7], comp), mtype, code, trigger, structure,
        f[10], _first(f[11], comp), _first(f[12], comp), f[15], f[16], _first(f[18], enc[1]),
    ]  # fmt: skip
    # The escape character occurs once in MSH-2; more occurrences mean some value is escaped.
    if len(enc) > 2 and text.count(enc[2]) > 1:
        for i in _UNESCAPED:
            values[i] = unescape(values[i], enc, sep)
    return _new_header(*values)


def read_header(raw: bytes) -> Header:
    """The MSH of `raw`, reading the first segment only.

    Leading whitespace (and a UTF-8 byte order mark) before "MSH" is skipped. Header fields are
    decoded with the charset MSH-18 declares, with undecodable bytes replaced; when MSH-18 is
    empty or unknown, an ASCII header is read as is, a non-ASCII one as UTF-8 if valid, else as
    latin-1. So the header is readable even when the body is not. Raises `ParseError` when there
    is no MSH or its separators (MSH-1, MSH-2) are missing or invalid; an empty MSH-10 is no error.
    """
    start, end = _msh_span(raw)
    seg = raw[start:end]
    text = seg.decode("latin-1")
    fields = _msh_fields(text)
    if not seg.isascii():
        text = _decode_header_text(seg, fields)
        fields = _msh_fields(text)
    return _make_header(fields, text)


def _decode_header_text(seg: bytes, latin1_fields: list[str]) -> str:
    charset = latin1_fields[18].partition(latin1_fields[2][1])[0] if len(latin1_fields) > 18 else ""
    codec = CHARSETS.get(charset.strip().upper())
    if codec is not None:
        return seg.decode(codec, "replace")
    try:
        return seg.decode("utf-8")
    except UnicodeDecodeError:
        return seg.decode("latin-1")


# --------------------------------------------------------------------------------------------
# Charsets and decoding
# --------------------------------------------------------------------------------------------

_DEFAULT_CODECS: dict[str, str] = {}
_PROBE = "MSH|^~\\&\r"


def _default_codec(name: str) -> str:
    """A configured default: an HL7 table 0211 name or an ASCII-compatible Python text codec."""
    codec = _DEFAULT_CODECS.get(name)
    if codec is not None:
        return codec
    codec = CHARSETS.get(name.strip().upper(), name.strip())
    try:
        usable = _PROBE.encode(codec).decode(codec) == _PROBE and b"MSH".decode(codec) == "MSH"
    except (LookupError, UnicodeError, ValueError, TypeError):
        usable = False
    if not usable:
        raise ParseError(f'unsupported character set "{name}" (configured default)')
    if len(_DEFAULT_CODECS) < 64:
        _DEFAULT_CODECS[name] = codec
    return codec


def codec_for(charset_field: str, default: str = "") -> str:
    """Python codec for an MSH-18 value (one repetition).

    A non-empty value must be in `CHARSETS` (case and surrounding blanks ignored), else
    `ParseError('unsupported character set "X" in MSH-18')`: a sender never picks an arbitrary
    Python codec. An empty value gives `default` (an HL7 name or a Python codec name, checked to
    be an ASCII-compatible text codec) or, without a default, "utf-8" (`DEFAULT_CODEC`).
    """
    name = charset_field.strip()
    if name:
        codec = CHARSETS.get(name.upper())
        if codec is None:
            raise ParseError(f'unsupported character set "{charset_field}" in MSH-18')
        return codec
    return _default_codec(default) if default else DEFAULT_CODEC


def _declared_charset(raw: bytes, start: int) -> str:
    """MSH-18 (first repetition) read from the bytes, '' when absent or not an MSH. Never raises."""
    if raw[start : start + 3] != b"MSH" or len(raw) < start + 5:
        return ""
    sep = raw[start + 3 : start + 4]
    if not _valid_delimiter(sep.decode("latin-1")):
        return ""
    _, end = _msh_span(raw)
    fields = raw[start:end].split(sep)
    if len(fields) < 18:
        return ""
    rep = fields[1][1:2]
    value = fields[17].split(rep, 1)[0] if rep else fields[17]
    return value.decode("latin-1")


def decode(raw: bytes, default_charset: str = "") -> tuple[str, str]:
    """(text, codec): `raw` decoded per MSH-18, else `default_charset`, else UTF-8.

    Leading whitespace and a UTF-8 byte order mark before the first segment are dropped.
    Undecodable bytes raise `ParseError` naming the byte, its offset in `raw`, the segment
    (name and occurrence, as in the path `PID[1]`) and field, and the charset. Raises nothing
    but `ParseError`.
    """
    start = _lead(raw)
    charset = _declared_charset(raw, start)
    codec = codec_for(charset, default_charset)
    try:
        return raw[start:].decode(codec), codec
    except UnicodeDecodeError as err:
        if charset:
            label = f"{charset} as declared in MSH-18"
        else:
            label = f"{codec} ({'configured default' if default_charset else 'default'}; MSH-18 is empty)"
        offset = start + err.start
        problem = f"byte 0x{raw[offset]:02X} at offset {offset} ({_where(raw, offset)}) is not valid {label}"
        raise ParseError(problem) from err
    except (UnicodeError, LookupError) as err:  # a codec that fails as a whole (never with ours)
        raise ParseError(f"cannot decode the message as {codec}: {err}") from err


_SEGMENT_BREAK = re.compile(rb"[\r\n]+")


def _where(raw: bytes, offset: int) -> str:
    """Human location of byte `offset`: 'PID segment 1, field PID-5' (occurrence, field)."""
    seg_start = max(raw.rfind(b"\r", 0, offset), raw.rfind(b"\n", 0, offset)) + 1
    before = [s for s in _SEGMENT_BREAK.split(raw[_lead(raw) : seg_start]) if s]
    name_bytes = raw[seg_start : seg_start + 3]
    if not (len(name_bytes) == 3 and name_bytes.isalnum() and seg_start + 3 <= offset):
        return f"segment {len(before) + 1}"
    name = name_bytes.decode("ascii")
    occurrence = 1 + sum(1 for s in before if s[:3] == name_bytes)
    sep = raw[seg_start + 3 : seg_start + 4] if name == "MSH" else raw[_lead(raw) + 3 : _lead(raw) + 4]
    field = raw.count(sep, seg_start, offset) + (1 if name == "MSH" else 0) if sep else 0
    return f"{name} segment {occurrence}, field {name}-{field}"


def parse(raw: bytes, default_charset: str = "") -> Hl7Message:
    """Decode (see `decode`) and wrap in a lazy `Hl7Message`; `ParseError` on failure."""
    text, codec = decode(raw, default_charset)
    return Hl7Message(text, codec)


# --------------------------------------------------------------------------------------------
# Escapes
# --------------------------------------------------------------------------------------------

_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_UNESCAPES: dict[tuple[str, str], dict[str, str]] = {}
_ESCAPES: dict[tuple[str, str], tuple[re.Pattern[str], dict[int, str] | None]] = {}


def _unescape_table(enc: str, field_sep: str) -> dict[str, str]:
    table = _UNESCAPES.get((enc, field_sep))
    if table is None:
        names = ("S", "R", "E", "T", "P")  # component, repetition, escape, subcomponent, truncation
        table = {name: char for name, char in zip(names, enc, strict=False)}
        table["F"] = field_sep
        table[".br"] = "\n"
        if len(_UNESCAPES) < 64:
            _UNESCAPES[(enc, field_sep)] = table
    return table


def _unescape_one(code: str, table: dict[str, str], codec: str) -> str | None:
    """Replacement for the escape sequence body `code`, or None to keep it verbatim."""
    known = table.get(code)
    if known is not None:
        return known
    if code[:1] == "X" and _HEX.fullmatch(code, 1):
        try:
            return bytes.fromhex(code[1:]).decode(codec)
        except (UnicodeError, LookupError):
            return None
    return None


def unescape(value: str, enc: str, field_sep: str, codec: str = DEFAULT_CODEC) -> str:
    """Resolve HL7 escapes: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\, \\Xhh..\\ (bytes decoded with `codec`),
    \\.br\\ -> "\\n". Unknown or malformed sequences (\\H\\, \\Cxxyy\\, unterminated...) stay as they are.
    """
    esc = enc[2:3]
    if not esc or esc not in value:
        return value
    table = _unescape_table(enc, field_sep)
    out: list[str] = []
    pos = 0
    while (i := value.find(esc, pos)) >= 0 and (j := value.find(esc, i + 1)) >= 0:
        replacement = _unescape_one(value[i + 1 : j], table, codec)
        if replacement is None:
            out.append(value[pos : j + 1])
        else:
            out.append(value[pos:i])
            out.append(replacement)
        pos = j + 1
    out.append(value[pos:])
    return "".join(out)


def _escape_table(enc: str, field_sep: str) -> tuple[re.Pattern[str], dict[int, str] | None]:
    entry = _ESCAPES.get((enc, field_sep))
    if entry is not None:
        return entry
    esc = enc[2:3]
    specials = dict(zip(enc, ("S", "R", "E", "T", "P"), strict=False))
    specials[field_sep] = "F"
    # Line breaks and MLLP block characters would break segments or framing: always escaped.
    specials.update({"\n": ".br", "\r": "X0D", "\x0b": "X0B", "\x1c": "X1C"})
    pattern = re.compile("[" + re.escape("".join(specials)) + "]")
    mapping = {ord(c): f"{esc}{code}{esc}" for c, code in specials.items()} if esc else None
    entry = (pattern, mapping)
    if len(_ESCAPES) < 64:
        _ESCAPES[(enc, field_sep)] = entry
    return entry


def escape(value: str, enc: str, field_sep: str) -> str:
    """Escape delimiters (and line breaks, MLLP block bytes) so `value` is one leaf.

    `unescape(escape(v, enc, sep), enc, sep) == v` for every string. Raises `ValueError` when
    `value` needs escaping and MSH-2 declares no escape character.
    """
    pattern, mapping = _escape_table(enc, field_sep)
    if pattern.search(value) is None:
        return value
    if mapping is None:
        raise ValueError(f"cannot escape {value!r}: MSH-2 {enc!r} declares no escape character")
    return value.translate(mapping)


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

_ALL = 0  # `[*]` in a path


class _Path(NamedTuple):
    seg: str
    seg_n: int  # 1-based occurrence, _ALL for [*]
    field: int
    rep: int  # 1-based repetition, _ALL for [*]
    comp: int  # 0: the whole repetition
    sub: int  # 0: the whole component


_PATH = re.compile(
    r"([A-Z0-9]{3})(?:\[(\*|[0-9]{1,6})\])?-([0-9]{1,4})(?:\[(\*|[0-9]{1,4})\])?"
    r"(?:\.([0-9]{1,4})(?:\.([0-9]{1,4}))?)?"
)
_PATHS: dict[str, _Path] = {}


def _parse_path(path: str) -> _Path:
    """Parse (and cache) `SEG[n]-F[r].C.S`; ValueError with the expected form when malformed."""
    parsed = _PATHS.get(path)
    if parsed is not None:
        return parsed
    m = _PATH.fullmatch(path)
    if m is None:
        raise ValueError(f'invalid HL7 path "{path}": expected SEG[n]-F[r].C.S, e.g. PID-3[2].1 or OBX[*]-5')
    seg, seg_n, field, rep, comp, sub = m.groups()
    explicit = [x for x in (seg_n, field, rep, comp, sub) if x is not None and x != "*"]
    if any(int(x) == 0 for x in explicit):
        raise ValueError(f'invalid HL7 path "{path}": positions start at 1')
    parsed = _Path(
        seg=seg,
        seg_n=_ALL if seg_n == "*" else int(seg_n or 1),
        field=int(field),
        rep=_ALL if rep == "*" else int(rep or 1),
        comp=int(comp or 0),
        sub=int(sub or 0),
    )
    if len(_PATHS) >= 4096:  # paths come from configuration; bound the cache all the same
        _PATHS.clear()
    _PATHS[path] = parsed
    return parsed


def parse_path(path: str) -> _Path:
    """Check and parse an HL7 path (`SEG[n]-F[r].C.S`); ValueError saying what is wrong."""
    return _parse_path(path)


def location(path: str) -> str:
    """The ERR-2 location of a concrete path: `OBX[2]-3.1` -> `OBX^2^3^1^1` (seg^seq^field^rep^comp^sub)."""
    p = _parse_path(path)
    parts = [p.seg, str(p.seg_n or 1), str(p.field)]
    if p.comp:
        parts += [str(p.rep or 1), str(p.comp)]
        if p.sub:
            parts.append(str(p.sub))
    return "^".join(parts)


def _render_path(p: _Path, seg_n: int, rep: int | None) -> str:
    text = f"{p.seg}[{seg_n}]-{p.field}"
    if rep is not None:
        text += f"[{rep}]"
    if p.comp:
        text += f".{p.comp}"
        if p.sub:
            text += f".{p.sub}"
    return text


def _put(items: list[str], index: int, value: str, keep: int = 1) -> list[str]:
    """items[index] = value, padding with '' as needed, then dropping trailing empty items."""
    if index >= len(items):
        items.extend([""] * (index + 1 - len(items)))
    items[index] = value
    while len(items) > keep and not items[-1]:
        items.pop()
    return items


# --------------------------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------------------------


def _nth(value: str, separator: str, n: int) -> str:
    """The n-th (1-based) part of `value` split on `separator`; '' when there is none.
    (No split at all in the common case of a value without the separator.)"""
    if separator not in value:
        return value if n == 1 else ""
    parts = value.split(separator)
    return parts[n - 1] if n <= len(parts) else ""


class Hl7Message:
    """An HL7 v2 message, split into segments at construction and into fields on first access.

    `modified` turns True on `set()` (engine.message.Message re-renders then); `codec` is the
    codec the text was decoded with and `to_bytes()` encodes with.
    """

    __slots__ = (
        "_comp",
        "_enc",
        "_esc",
        "_fields",
        "_header",
        "_index",
        "_rep",
        "_segs",
        "_sep",
        "_sub",
        "codec",
        "modified",
    )

    def __init__(self, text: str, codec: str = DEFAULT_CODEC) -> None:
        """Split `text` into segments (\\r, \\n or \\r\\n; blank lines dropped); ParseError unless
        the first segment is a valid MSH."""
        if not text.startswith("MSH"):
            text = text.lstrip(" \t\r\n\ufeff")
        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        segs = [s for s in text.split("\r") if s and not s.isspace()]
        if not segs or not segs[0].startswith("MSH"):
            raise ParseError("no MSH segment at start")
        msh = _msh_fields(segs[0])
        self._segs = segs
        self._fields: list[list[str] | None] = [None] * len(segs)
        self._fields[0] = msh
        self._sep = msh[1]
        self._enc = enc = msh[2]
        self._comp, self._rep = enc[0], enc[1]
        self._esc = enc[2] if len(enc) > 2 else _ABSENT
        self._sub = enc[3] if len(enc) > 3 else _ABSENT
        self._header: Header | None = None
        self._index: dict[str, list[int]] | None = None
        self.codec = codec
        self.modified = False

    def __repr__(self) -> str:  # no patient data: this ends up in logs
        h = self.header
        return f"<Hl7Message {h.message_type!r} control_id={h.control_id!r} segments={len(self._segs)}>"

    @property
    def header(self) -> Header:
        if self._header is None:
            self._header = _make_header(self._fields_of(0), self._segs[0])
        return self._header

    # -- segments ---------------------------------------------------------------------------

    def _occurrences(self, name: str) -> list[int]:
        """Indexes of the segments named `name` (do not mutate)."""
        index = self._index
        if index is None:
            index = self._index = {}
            sep = self._sep
            for i, s in enumerate(self._segs):
                seg_name = s[:3] if s[3:4] == sep else s.partition(sep)[0]
                found = index.get(seg_name)
                if found is None:
                    index[seg_name] = [i]
                else:
                    found.append(i)
        return index.get(name, _NONE)

    def _segment(self, name: str, occurrence: int) -> int:
        found = self._occurrences(name)
        return found[occurrence - 1] if occurrence <= len(found) else -1

    def _fields_of(self, i: int) -> list[str]:
        fields = self._fields[i]
        if fields is None:
            fields = self._segs[i].split(self._sep)
            if fields[0] == "MSH":  # a later MSH (batch): same numbering as the first
                fields.insert(1, self._sep)
            self._fields[i] = fields
        return fields

    def segment_names(self) -> list[str]:
        sep = self._sep
        return [s[:3] if s[3:4] == sep else s.partition(sep)[0] for s in self._segs]

    def count(self, segment: str) -> int:
        return len(self._occurrences(segment))

    # -- reading ----------------------------------------------------------------------------

    def _within(self, value: str, comp: int, sub: int) -> str:
        """Component/subcomponent of one repetition; leaves are unescaped, others kept encoded."""
        if comp:
            value = _nth(value, self._comp, comp)
            if sub:
                value = _nth(value, self._sub, sub)
            elif self._sub in value:
                return value
        elif self._comp in value or self._sub in value:
            return value
        return unescape(value, self._enc, self._sep, self.codec) if self._esc in value else value

    def _field(self, i: int, p: _Path) -> str:
        """Field text ('' if absent); MSH-1 and MSH-2 are the delimiters, verbatim."""
        fields = self._fields[i] or self._fields_of(i)
        return fields[p.field] if p.field < len(fields) else ""

    def _value(self, i: int, p: _Path, rep: int) -> str:
        field = self._field(i, p)
        if p.field <= 2 and p.seg == "MSH":
            return field if rep == 1 and not p.comp else ""
        return self._within(_nth(field, self._rep, rep), p.comp, p.sub)

    def _repetitions(self, i: int, p: _Path) -> list[str]:
        field = self._field(i, p)
        if p.field <= 2 and p.seg == "MSH":
            return [field] if not p.comp else []
        if not field:
            return []
        return [self._within(r, p.comp, p.sub) for r in field.split(self._rep)]

    def get(self, path: str) -> str:
        """Value at `path` ('' if absent); `[*]` picks the first occurrence/repetition.

        Path: `SEG[n]-F[r].C.S`, n and r 1-based or `*` (default 1), C and S 1-based. Without
        `[r]` the first repetition is meant. A leaf value is unescaped; a value that still has
        deeper delimiters (e.g. `PID-5` = "TEST^PATIENT") is returned encoded. MSH-1 and MSH-2
        are the delimiters themselves, verbatim.
        """
        p = _PATHS.get(path) or _parse_path(path)
        i = self._segment(p.seg, p.seg_n or 1)
        return "" if i < 0 else self._value(i, p, p.rep or 1)

    def get_all(self, path: str) -> list[str]:
        """Every value matched by a path with `[*]`; without `[*]`, `[get(path)]` or [] if empty.

        `SEG[*]` gives one entry per segment occurrence, '' included, so lists taken from the
        same segments line up (`OBX[*]-3.1` with `OBX[*]-5`). `F[*]` gives one entry per
        repetition present (an empty field has none).
        """
        p = _PATHS.get(path) or _parse_path(path)
        if p.seg_n and p.rep:
            value = self.get(path)
            return [value] if value else []
        if p.seg_n:
            i = self._segment(p.seg, p.seg_n)
            segments = [i] if i >= 0 else []
        else:
            segments = self._occurrences(p.seg)
        if p.rep:
            return [self._value(i, p, p.rep) for i in segments]
        return [value for i in segments for value in self._repetitions(i, p)]

    def expand(self, path: str) -> list[str]:
        """The concrete paths a `[*]` path stands for here, in order (`OBX[*]-3` ->
        `OBX[1]-3`, `OBX[2]-3`...); a path without `[*]` is returned as it is. An empty field
        with `[*]` repetitions still yields its first repetition, so it can be reported."""
        p = _PATHS.get(path) or _parse_path(path)
        if p.seg_n and p.rep:
            return [path]
        occurrences = [p.seg_n] if p.seg_n else range(1, self.count(p.seg) + 1)
        if p.rep:
            return [_render_path(p, n, p.rep if p.rep > 1 else None) for n in occurrences]
        paths = []
        for n in occurrences:
            i = self._segment(p.seg, n)
            reps = len(self._repetitions(i, p._replace(comp=0, sub=0))) if i >= 0 else 0
            paths += [_render_path(p, n, r) for r in range(1, max(reps, 1) + 1)]
        return paths

    # -- writing ----------------------------------------------------------------------------

    def set(self, path: str, value: str) -> None:
        """Write `value` (escaped) at `path`, creating missing fields/repetitions/components.

        Without `.C`, the whole repetition is replaced. Raises ValueError for a path with `[*]`,
        MSH-1/MSH-2, a segment the message lacks, or a value the message codec cannot encode.
        """
        p = _parse_path(path)
        if not (p.seg_n and p.rep):
            raise ValueError(f'cannot set "{path}": [*] selects several places')
        if p.seg == "MSH" and p.field <= 2:
            raise ValueError(f'cannot set "{path}": MSH-1 and MSH-2 are the message delimiters')
        i = self._segment(p.seg, p.seg_n)
        if i < 0:
            have = self.count(p.seg)
            raise ValueError(f'cannot set "{path}": the message has {have} {p.seg} segment(s)')
        encoded = escape(value, self._enc, self._sep)
        try:
            encoded.encode(self.codec)
        except UnicodeEncodeError as err:
            raise ValueError(f'cannot set "{path}": value not representable in {self.codec}') from err
        fields = self._fields_of(i)
        field = fields[p.field] if p.field < len(fields) else ""
        reps = field.split(self._rep) if field else []
        old = reps[p.rep - 1] if p.rep <= len(reps) else ""
        new = self._replace_within(old, p, encoded)
        new_field = self._rep.join(_put(reps, p.rep - 1, new))
        is_msh = p.seg == "MSH"
        _put(fields, p.field, new_field, keep=3 if is_msh else 1)
        self._segs[i] = self._sep.join(fields[:1] + fields[2:] if is_msh else fields)
        if is_msh:
            self._header = None
        self.modified = True

    def _replace_within(self, old: str, p: _Path, encoded: str) -> str:
        if not p.comp:
            return encoded
        comps = old.split(self._comp) if old else []
        if not p.sub:
            return self._comp.join(_put(comps, p.comp - 1, encoded))
        if self._sub == _ABSENT and p.sub > 1:
            raise ValueError(
                f"cannot set a subcomponent: MSH-2 {self._enc!r} declares no subcomponent separator"
            )
        old_comp = comps[p.comp - 1] if p.comp <= len(comps) else ""
        if self._sub == _ABSENT:
            return self._comp.join(_put(comps, p.comp - 1, encoded))
        subs = old_comp.split(self._sub) if old_comp else []
        new_comp = self._sub.join(_put(subs, p.sub - 1, encoded))
        return self._comp.join(_put(comps, p.comp - 1, new_comp))

    # -- rendering --------------------------------------------------------------------------

    def to_text(self) -> str:
        """Segments joined by \\r, with a trailing \\r."""
        return "\r".join(self._segs) + "\r"

    def to_bytes(self) -> bytes:
        return self.to_text().encode(self.codec)


# --------------------------------------------------------------------------------------------
# ACK building
# --------------------------------------------------------------------------------------------

_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B36_PAIRS = [a + b for a in _B36 for b in _B36]
_ID_SPACE = 36**6  # counter values per prefix


def _base36(n: int, width: int) -> str:
    digits = ""
    while n:
        n, r = divmod(n, 36)
        digits = _B36[r] + digits
    return digits.rjust(width, "0")[-width:]


class _IdState:
    """Control ids: "P" + base36(start ms + epoch, 8) + base36(pid, 5) + base36(counter, 6).

    20 characters (MSH-10 is ST(20) in 2.5). Unique across processes (pid) and restarts (start
    time); after 36**6 ids the epoch bumps the time part by 1 ms, which stays in the past since
    36**6 ids take hours. Forked children reset (new pid, new start). Within a host only.
    """

    counter: itertools.count[int] = itertools.count()
    start_ms = 0
    pid = 0
    prefix: tuple[int, str] = (-1, "")

    @classmethod
    def reset(cls) -> None:
        cls.counter = itertools.count()
        cls.start_ms = time.time_ns() // 1_000_000
        cls.pid = os.getpid()
        cls.prefix = (-1, "")


_IdState.reset()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_IdState.reset)


def new_control_id() -> str:
    """A fresh MSH-10: 20 characters, unique across processes and restarts on a host."""
    epoch, n = divmod(next(_IdState.counter), _ID_SPACE)
    current, prefix = _IdState.prefix
    if current != epoch:
        prefix = "P" + _base36(_IdState.start_ms + epoch, 8) + _base36(_IdState.pid, 5)
        _IdState.prefix = (epoch, prefix)
    high, rest = divmod(n, 1296 * 1296)
    mid, low = divmod(rest, 1296)
    return prefix + _B36_PAIRS[high] + _B36_PAIRS[mid] + _B36_PAIRS[low]


class _LastSecond:
    """strftime costs ~1 µs: format each second once."""

    value: tuple[int, str] = (-1, "")


def hl7_timestamp(t: float | None = None) -> str:
    """`t` (default: now) as an HL7 DTM in UTC: YYYYMMDDHHMMSS.ffff+0000."""
    if t is None:
        second, ten_thousandths = divmod(time.time_ns() // 100_000, 10_000)
    else:
        second = int(t // 1)
        ten_thousandths = min(9999, int((t - second) * 10_000))  # t - second is exact
    cached, text = _LastSecond.value
    if cached != second:
        text = time.strftime("%Y%m%d%H%M%S", time.gmtime(second))
        _LastSecond.value = (second, text)
    return f"{text}.{ten_thousandths:04d}+0000"


_VERSIONS: dict[str, tuple[int, ...]] = {}


def _version_tuple(version: str) -> tuple[int, ...]:
    """(2, 5, 1) for "2.5.1"; an unreadable version counts as recent (2.5 rules)."""
    found = _VERSIONS.get(version)
    if found is None:
        try:
            found = tuple(int(x) for x in version.split("."))
        except ValueError:
            found = (2, 5, 1)
        if len(_VERSIONS) < 64:
            _VERSIONS[version] = found
    return found


def _ack_codec(charset: str) -> str:
    """Codec of an ACK: MSH-18's, or ASCII (the common subset) when MSH-18 is unsupported."""
    try:
        return codec_for(charset)
    except ParseError:
        return "ascii"


def _ack_escaper(enc: str, sep: str) -> Callable[[str], str]:
    """escape() for this message; without an escape character, delimiters become blanks."""
    pattern, mapping = _escape_table(enc, sep)
    if mapping is None:
        return lambda value: pattern.sub(" ", value)
    return lambda value: value if pattern.search(value) is None else value.translate(mapping)


class _AckPlan(NamedTuple):
    """What an ACK takes from a kind of header, computed once per sender configuration."""

    escape: Callable[[str], str]
    message_type: str  # MSH-9
    tail: str  # MSH-11 to MSH-18, joined and trimmed
    recent: bool  # v2.5+ ERR layout
    codec: str


_ACK_PLANS: dict[tuple[str, ...], _AckPlan] = {}


def _ack_plan(h: Header) -> _AckPlan:
    enhanced = "NE" if h.accept_ack or h.app_ack else ""
    key = (h.field_sep, h.encoding_chars, h.trigger_event, h.processing_id, h.version, h.charset, enhanced)
    plan = _ACK_PLANS.get(key)
    if plan is not None:
        return plan
    sep, enc = h.field_sep, h.encoding_chars
    esc = _ack_escaper(enc, sep)
    version = h.version or "2.5.1"
    trigger = esc(h.trigger_event)
    if not trigger:
        message_type = "ACK"
    elif _version_tuple(version) >= (2, 3, 1):  # MSH-9.3 (message structure) exists since 2.3.1
        message_type = f"ACK{enc[0]}{trigger}{enc[0]}ACK"
    else:
        message_type = f"ACK{enc[0]}{trigger}"
    tail = sep.join(
        _trim([esc(h.processing_id or "P"), esc(version), "", "", enhanced, enhanced, "", esc(h.charset)])
    )
    plan = _AckPlan(esc, message_type, tail, _version_tuple(version) >= (2, 5), _ack_codec(h.charset))
    if len(_ACK_PLANS) >= 256:
        _ACK_PLANS.clear()
    _ACK_PLANS[key] = plan
    return plan


def _trim(fields: list[str]) -> list[str]:
    while fields and not fields[-1]:
        fields.pop()
    return fields


def _err_v25(finding: Finding, enc: str, esc: Callable[[str], str]) -> list[str]:
    """ERR (v2.5+): ERR-2 location, ERR-3 code^name^HL70357, ERR-4 severity, ERR-5 rule id,
    ERR-8 user message."""
    comp = enc[0]
    location = comp.join(esc(part) for part in finding.location.split("^")) if finding.location else ""
    name = TABLE_0357.get(finding.code)
    code, app_code = (finding.code, "") if name else ("207", finding.code)
    severity = finding.severity if finding.severity in ("E", "W", "I") else "E"
    error = f"{code}{comp}{name or TABLE_0357['207']}{comp}HL70357"
    return ["ERR", "", location, error, severity, esc(app_code), "", "", esc(finding.text)]


def _err_v23(finding: Finding, enc: str, esc: Callable[[str], str]) -> list[str]:
    """ERR (v2.3, 2.4): ERR-1 segment^sequence^field^code&name&HL70357; a rule id travels as the
    alternate code (local system "L") of ERR-1.4."""
    comp, sub = enc[0], enc[3:4]
    parts = (finding.location.split("^") if finding.location else []) + ["", "", ""]
    name = TABLE_0357.get(finding.code)
    code = finding.code if name else "207"
    error = [code, name or TABLE_0357["207"], "HL70357"]
    if not name and finding.code:
        error += [esc(finding.code), "", "L"]
    error_text = sub.join(error) if sub else code
    return ["ERR", comp.join([*(esc(x) for x in parts[:3]), error_text])]


def build_ack(
    header: Header,
    code: str,
    findings: Sequence[Finding] = (),
    *,
    codec: str = "",
    control_id: str = "",
    timestamp: str = "",
) -> bytes:
    """The acknowledgement of the message whose header is `header` (MSH, MSA, one ERR a finding).

    MSH: same delimiters; MSH-3/4 and MSH-5/6 swapped verbatim; fresh MSH-7 and MSH-10 (unless
    given); MSH-9 "ACK^<trigger>^ACK" (no structure before 2.3.1, just "ACK" without trigger);
    MSH-11/12 echoed ("P", "2.5.1" if empty); MSH-15/16 "NE" when the original was enhanced;
    MSH-18 echoed. MSA-3 carries the first error's text (80 chars) for older senders. ERR uses
    ERR-2..8 from v2.5 on and ERR-1 before. Every value is escaped. Encoded with `codec`
    (default: MSH-18's, ASCII if unsupported), unencodable characters replaced.
    """
    if code not in ACK_CODES:
        raise ValueError(f"ACK code must be one of {sorted(ACK_CODES)}, not {code!r}")
    plan = _ack_plan(header)
    sep, enc, esc = header.field_sep, header.encoding_chars, plan.escape
    msh = sep.join((
        "MSH", enc, header.receiving_app, header.receiving_facility, header.sending_app,
        header.sending_facility, esc(timestamp) if timestamp else hl7_timestamp(), "", plan.message_type,
        esc(control_id) if control_id else new_control_id(), plan.tail,
    ))  # fmt: skip
    error_text = next((f.text for f in findings if f.severity == "E"), "") if findings else ""
    segments = [msh, sep.join(_trim(["MSA", code, esc(header.control_id), esc(error_text[:80])]))]
    if findings:
        make_err = _err_v25 if plan.recent else _err_v23
        segments.extend(sep.join(_trim(make_err(f, enc, esc))) for f in findings)
    segments.append("")
    return "\r".join(segments).encode(codec or plan.codec, "replace")
