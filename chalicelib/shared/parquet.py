"""A minimal Parquet writer in the standard library alone, because the API Lambda that makes exports has no
pyarrow: flat OPTIONAL columns of UTF-8 strings, INT64 or DOUBLE, PLAIN-encoded v1 data pages, GZIP-compressed."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STRING = "string"
INT64 = "int64"
DOUBLE = "double"
TYPES = (STRING, INT64, DOUBLE)

MAGIC = b"PAR1"
CREATED_BY = "handpipe"
# A row group per this many rows: a job of an hour (~100k hands) is a few groups, and only one group's
# columns are held in memory at a time.
ROW_GROUP_ROWS = 50_000

# Values of the parquet-format Thrift enums this writer uses.
_PHYSICAL = {STRING: 6, INT64: 2, DOUBLE: 5}  # Type: BYTE_ARRAY, INT64, DOUBLE
_OPTIONAL = 1  # FieldRepetitionType
_UTF8 = 0  # ConvertedType, for readers that predate LogicalType
_PLAIN, _RLE = 0, 3  # Encoding
_GZIP = 2  # CompressionCodec
_DATA_PAGE = 0  # PageType

# Thrift compact protocol type ids.
_I16, _I32, _I64, _BINARY, _LIST, _STRUCT = 4, 5, 6, 8, 9, 12
_I16_MAX, _I32_MAX = 2**15 - 1, 2**31 - 1

# A Thrift struct as (field id, compact type, value) in increasing field id order; a None value is an
# absent optional field. A list's value is (element type, items), a struct's is another such list.
Fields = list[tuple[int, int, Any]]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _value(kind: int, value: Any) -> bytes:
    if kind in (_I16, _I32, _I64):
        return _varint(_zigzag(value))
    if kind == _BINARY:
        data = value.encode() if isinstance(value, str) else bytes(value)
        return _varint(len(data)) + data
    if kind == _STRUCT:
        return _struct(value)
    if kind == _LIST:
        element, items = value
        header = (
            bytes([len(items) << 4 | element]) if len(items) < 15 else bytes([0xF0 | element]) + _varint(len(items))
        )
        return header + b"".join(_value(element, item) for item in items)
    raise ValueError(f"unsupported Thrift type {kind}")


def _struct(fields: Fields) -> bytes:
    """Thrift compact protocol: field headers carry the id as a delta from the previous field's."""
    out = bytearray()
    last = 0
    for field_id, kind, value in fields:
        if value is None:
            continue
        delta = field_id - last
        if 0 < delta <= 15:
            out.append(delta << 4 | kind)
        else:
            out.append(kind)
            out += _varint(_zigzag(field_id))
        out += _value(kind, value)
        last = field_id
    out.append(0)  # stop
    return bytes(out)


def _definition_levels(present: list[bool]) -> bytes:
    """RLE/bit-packed hybrid of bit width 1 (1 = a value, 0 = null), prefixed by its 4-byte length as v1
    data pages want: one RLE run when every value is alike, else one bit-packed run over them all."""
    count = len(present)
    if count == 0:
        encoded = b""
    elif all(present) or not any(present):
        encoded = _varint(count << 1) + bytes([1 if present[0] else 0])
    else:
        groups = (count + 7) // 8
        # value i is bit i, least significant first: the bits of one integer written little-endian
        bits = int("".join("1" if p else "0" for p in reversed(present)), 2)
        encoded = _varint(groups << 1 | 1) + bits.to_bytes(groups, "little")
    return struct.pack("<I", len(encoded)) + encoded


def _plain(kind: str, values: list[Any]) -> bytes:
    if kind == INT64:
        return struct.pack(f"<{len(values)}q", *values)
    if kind == DOUBLE:
        return struct.pack(f"<{len(values)}d", *values)
    parts = []
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"a {STRING} column holds str or None, got {type(value).__name__}")
        data = value.encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _gzip(data: bytes) -> bytes:
    # wbits 31: the gzip container (RFC 1952) that the GZIP codec means; zlib writes no time into its header,
    # so the same rows give the same bytes
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _column_chunk(out: io.BytesIO, name: str, kind: str, values: list[Any]) -> tuple[Fields, int]:
    """Writes one column chunk (a single data page) at the stream's position; returns its ColumnChunk
    and its uncompressed size."""
    present = [value is not None for value in values]
    try:
        page = _definition_levels(present) + _plain(kind, [value for value in values if value is not None])
    except (struct.error, TypeError) as error:
        raise TypeError(f"column {name!r} ({kind}): {error}") from None
    if len(page) > _I32_MAX:
        raise ValueError(f"column {name!r}: a page of {len(page)} bytes is too large, write smaller row groups")
    compressed = _gzip(page)
    data_page: Fields = [(1, _I32, len(values)), (2, _I32, _PLAIN), (3, _I32, _RLE), (4, _I32, _RLE)]
    header = _struct([(1, _I32, _DATA_PAGE), (2, _I32, len(page)), (3, _I32, len(compressed)), (5, _STRUCT, data_page)])
    offset = out.tell()
    out.write(header)
    out.write(compressed)
    metadata: Fields = [
        (1, _I32, _PHYSICAL[kind]),
        (2, _LIST, (_I32, [_PLAIN, _RLE])),
        (3, _LIST, (_BINARY, [name])),
        (4, _I32, _GZIP),
        (5, _I64, len(values)),
        (6, _I64, len(header) + len(page)),
        (7, _I64, len(header) + len(compressed)),
        (9, _I64, offset),
    ]
    return [(2, _I64, offset), (3, _STRUCT, metadata)], len(header) + len(page)


def _row_group(
    out: io.BytesIO, schema: Sequence[tuple[str, str]], rows: list[Mapping[str, Any]], ordinal: int
) -> Fields:
    start = out.tell()
    chunks = [_column_chunk(out, name, kind, [row[name] for row in rows]) for name, kind in schema]
    return [
        (1, _LIST, (_STRUCT, [chunk for chunk, _ in chunks])),
        (2, _I64, sum(size for _, size in chunks)),
        (3, _I64, len(rows)),
        (5, _I64, start),
        (6, _I64, out.tell() - start),
        (7, _I16, ordinal if ordinal <= _I16_MAX else None),  # optional, and only an i16
    ]


def _schema_elements(schema: Sequence[tuple[str, str]]) -> list[Fields]:
    elements: list[Fields] = [[(4, _BINARY, "schema"), (5, _I32, len(schema))]]
    for name, kind in schema:
        element: Fields = [(1, _I32, _PHYSICAL[kind]), (3, _I32, _OPTIONAL), (4, _BINARY, name)]
        if kind == STRING:
            element += [(6, _I32, _UTF8), (10, _STRUCT, [(1, _STRUCT, [])])]  # LogicalType STRING
        elements.append(element)
    return elements


def write(
    schema: Sequence[tuple[str, str]], rows: Iterable[Mapping[str, Any]], row_group_rows: int = ROW_GROUP_ROWS
) -> tuple[bytes, int]:
    """A Parquet file of `rows` (mappings with every name of `schema`; None is null) with the columns
    (name, STRING | INT64 | DOUBLE) of `schema`, all OPTIONAL, in row groups of `row_group_rows`;
    returns its bytes and the row count. The schema is declared, not inferred, so a file of no rows
    still has it."""
    if row_group_rows < 1:
        raise ValueError(f"row_group_rows must be at least 1, got {row_group_rows}")
    for name, kind in schema:
        if kind not in TYPES:
            raise ValueError(f"column {name!r}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    if len({name for name, _ in schema}) != len(schema):
        raise ValueError("column names must be unique")
    out = io.BytesIO()
    out.write(MAGIC)
    groups: list[Fields] = []
    count = 0
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == row_group_rows:
            groups.append(_row_group(out, schema, batch, len(groups)))
            count += len(batch)
            batch = []
    if batch:
        groups.append(_row_group(out, schema, batch, len(groups)))
        count += len(batch)
    footer = _struct(
        [
            (1, _I32, 1),  # format version
            (2, _LIST, (_STRUCT, _schema_elements(schema))),
            (3, _I64, count),
            (4, _LIST, (_STRUCT, groups)),
            (6, _BINARY, CREATED_BY),
        ]
    )
    out.write(footer)
    out.write(struct.pack("<I", len(footer)))
    out.write(MAGIC)
    return out.getvalue(), count
