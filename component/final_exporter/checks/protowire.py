"""The protocol buffer wire format, read without a generated class or TensorFlow.

`saved_model.pb` is a serialized `tensorflow.SavedModel`. Importing TensorFlow's
generated classes to read it costs seconds (they live inside the `tensorflow`
package), so the few fields this package needs are read here at the wire level:
a message is a run of (field number, wire type, value) records, and a
length-delimited value that is not needed is skipped without being decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, I32 = 0, 1, 2, 5

# The messages a reader needs: message -> {field name: (field number, type)}, a type
# being another message of the schema or `string`, `int` (int64), `bool`, `enum`.
# Map fields are their entry messages (`key` 1, `value` 2), as on the wire.
Schema = Mapping[str, Mapping[str, tuple[int, str]]]
# A decoded message: field name -> its values in order (one for a singular field).
Message = dict[str, list[Any]]


class WireError(ValueError):
    """The bytes are not a well-formed protocol buffer message (truncated or corrupt)."""


def read_varint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    """(the unsigned varint at `pos`, the position after it)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError('truncated varint')
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError('varint too long')


def len_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (`field`, wire type LEN) holding `payload`."""
    return _varint(field << 3 | LEN) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def signed64(value: int) -> int:
    """An `int64` field's value: negative numbers travel as 10-byte two's complement varints."""
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(buf: memoryview | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yields (field_number, wire_type, value_start, value_end) of one message."""
    pos = start
    while pos < end:
        # A one-byte tag of a value under 128 bytes (field numbers to 15) read inline: a
        # graph file's 20,000 asset entries took 30 ms through read_varint.
        tag = buf[pos]
        if tag < 0x80 and tag & 7 == LEN and tag >> 3 and pos + 1 < end and buf[pos + 1] < 0x80:
            field, wire, value_start = tag >> 3, LEN, pos + 2
            pos = value_start + buf[pos + 1]
        else:
            field, wire, value_start, pos = field_at(buf, pos, end)
        if pos > end:
            raise WireError('message truncated')
        yield field, wire, value_start, pos


def field_at(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field_number, wire_type, value_start, value_end) of the field whose tag is at `pos`
    of `buf` (read up to `end`); the value may end past `end`, which the caller checks.

    Raises:
        WireError: for a tag or length cut short, field number 0 or an unknown wire type.
    """
    tag, pos = read_varint(buf, pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0:
        raise WireError('field number 0')
    if wire == LEN:
        length, value_start = read_varint(buf, pos, end)
        return field, wire, value_start, value_start + length
    if wire == VARINT:
        return field, wire, pos, read_varint(buf, pos, end)[1]
    if wire == I64:
        return field, wire, pos, pos + 8
    if wire == I32:
        return field, wire, pos, pos + 4
    raise WireError(f'unsupported wire type {wire}')


def decode(buf: memoryview, start: int, end: int, message: str, schema: Schema) -> Message:
    """The fields of `message` that `schema` lists; the others are skipped undecoded.

    Raises:
        WireError: if the bytes are not such a message.
        UnicodeDecodeError: if a string field is not UTF-8.
    """
    by_number = {number: (name, kind) for name, (number, kind) in schema[message].items()}
    decoded: Message = {}
    for number, wire, s, e in fields(buf, start, end):
        if number in by_number:
            name, kind = by_number[number]
            decoded.setdefault(name, []).append(_value(buf, wire, s, e, kind, schema))
    return decoded


def _value(buf: memoryview, wire: int, start: int, end: int, kind: str, schema: Schema) -> Any:
    expected = LEN if kind in schema or kind == 'string' else VARINT
    if wire != expected:
        raise WireError(f'a {kind} field has wire type {wire}')
    if kind in schema:
        return decode(buf, start, end, kind, schema)
    if kind == 'string':
        return bytes(buf[start:end]).decode('utf-8')
    value = read_varint(buf, start, end)[0]
    if kind == 'int':
        return signed64(value)
    return bool(value) if kind == 'bool' else value
