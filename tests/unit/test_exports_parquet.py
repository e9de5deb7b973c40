"""The standard-library Parquet writer (chalicelib/shared/parquet.py) and the parquet export, read back with
pyarrow and pandas, which must see exactly the rows that were written."""

from __future__ import annotations

import csv
import gzip
import io
import math
import struct
from typing import Any

import pandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chalicelib.shared import exports, parquet

EXPECTED_ARROW_TYPES = {
    "job_id": pa.string(),
    "video_id": pa.string(),
    "frame_index": pa.int64(),
    "hand_index": pa.int64(),
    "handedness": pa.string(),
    "gesture": pa.string(),
}


def read(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def hand(label: str, shift: float) -> dict[str, Any]:
    return {
        "handedness": label,
        "score": 0.875,
        "landmarks": [[round(0.1 + shift + i / 97, 5), round(0.2 + i / 89, 5), -i / 1000] for i in range(21)],
        "world_landmarks": [[i / 100, -i / 100, round(i / 7, 5)] for i in range(21)],
    }


def export_rows(frames: int, **ids: str | None) -> list[dict[str, Any]]:
    """exports.rows of a synthetic result: two hands in even frames, one in odd ones, and a gesture for
    the first hand of every third frame only (the others have gesture "" and gesture_score None)."""
    result = {
        "frames": [
            {
                "index": i,
                "timestamp_ms": i * 33.333,
                "hands": [hand("Left", 0.0), hand("Right", 0.5)] if i % 2 == 0 else [hand("Right", i / 1e4)],
            }
            for i in range(frames)
        ]
    }
    insights = {"gestures": {"per_frame": [[i, 0, "open_palm", 0.75] for i in range(0, frames, 3)]}}
    return list(exports.rows(result, insights, **ids))


# ------------------------------------------------------------------------------------ the export


def test_the_schema_is_declared_for_every_column() -> None:
    assert [name for name, _ in exports.PARQUET_SCHEMA] == exports.COLUMNS
    data, count = exports.to_parquet(iter([]))
    assert count == 0
    schema = read(data).schema
    assert schema.names == exports.COLUMNS
    for field in schema:
        assert field.type == EXPECTED_ARROW_TYPES.get(field.name, pa.float64()), field
        assert field.nullable


def test_an_empty_export_keeps_its_columns_and_types() -> None:
    data, count = exports.to_parquet(iter([]))
    table = read(data)
    assert count == 0 and table.num_rows == 0 and table.column_names == exports.COLUMNS
    frame = pandas.read_parquet(io.BytesIO(data))
    assert len(frame) == 0 and list(frame.columns) == exports.COLUMNS
    assert frame["frame_index"].dtype == "int64" and frame["x0"].dtype == "float64"
    assert pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups == 0


def test_export_rows_round_trip_with_nulls() -> None:
    rows = export_rows(10, video_id="vid_é")  # job_id None: a null in every row
    data, count = exports.to_parquet(iter(rows))
    assert count == len(rows) == 15
    assert read(data).to_pylist() == rows  # key order too: the columns are in COLUMNS order
    assert any(row["gesture_score"] is None and row["gesture"] == "" for row in rows)

    frame = pandas.read_parquet(io.BytesIO(data))
    assert list(frame.columns) == exports.COLUMNS and len(frame) == 15
    assert frame["frame_index"].dtype == "int64" and frame["hand_index"].dtype == "int64"
    assert frame["x0"].dtype == "float64" and frame["gesture_score"].dtype == "float64"
    assert frame["job_id"].isna().all() and frame["gesture_score"].isna().sum() == 11


def test_parquet_holds_the_same_rows_as_the_csv_export() -> None:
    rows = export_rows(7, job_id="job_" + "a" * 32, video_id="vid_" + "b" * 32)
    text = gzip.decompress(exports.to_csv_gz(iter(rows))[0]).decode()
    from_csv = list(csv.DictReader(io.StringIO(text)))
    from_parquet = read(exports.to_parquet(iter(rows))[0]).to_pylist()
    assert len(from_csv) == len(from_parquet) == 11
    for cells, values in zip(from_csv, from_parquet, strict=True):
        assert list(cells) == list(values) == exports.COLUMNS
        for name, kind in exports.PARQUET_SCHEMA:
            value, cell = values[name], cells[name]
            if value is None:
                assert cell == ""
            elif kind == parquet.STRING:
                assert value == cell
            elif kind == parquet.INT64:
                assert isinstance(value, int) and value == int(cell)
            else:
                assert isinstance(value, float) and value == float(cell)


def test_many_rows_in_several_row_groups() -> None:
    rows = export_rows(40, job_id="job_x", video_id="vid_y")
    data, count = parquet.write(exports.PARQUET_SCHEMA, iter(rows), row_group_rows=7)
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert count == metadata.num_rows == len(rows) == 60
    assert metadata.num_row_groups == 9 and metadata.row_group(8).num_rows == 4
    assert read(data).to_pylist() == rows


def test_an_hour_of_rows_is_a_few_row_groups() -> None:
    schema = [("name", parquet.STRING), ("frame", parquet.INT64), ("x", parquet.DOUBLE)]
    total = 2 * parquet.ROW_GROUP_ROWS + 123
    rows = ({"name": None if i % 11 == 0 else f"h{i % 3}", "frame": i, "x": i / 7} for i in range(total))
    data, count = parquet.write(schema, rows)
    assert count == total
    parsed = pq.ParquetFile(io.BytesIO(data))
    assert parsed.metadata.num_row_groups == 3 and parsed.metadata.row_group(2).num_rows == 123
    table = parsed.read()
    assert table.column("frame").to_pylist() == list(range(total))
    assert table.column("x").to_pylist() == [i / 7 for i in range(total)]
    assert table.column("name").null_count == len(range(0, total, 11))


# ------------------------------------------------------------------------------------ the writer


SCHEMA = [("s", parquet.STRING), ("i", parquet.INT64), ("d", parquet.DOUBLE)]


def test_values_of_every_type_come_back_exactly() -> None:
    rows: list[dict[str, Any]] = [
        {"s": "", "i": 0, "d": 0.0},
        {"s": "Grüße, 手, 👋 and \x00 inside", "i": 2**63 - 1, "d": -0.0},
        {"s": None, "i": None, "d": None},
        {"s": "x" * 70_000, "i": -(2**63), "d": math.inf},
        {"s": "ß", "i": -1, "d": 5e-324},
        {"s": "last", "i": 42, "d": math.nan},
    ]
    data, count = parquet.write(SCHEMA, rows)
    assert count == 6
    back = read(data).to_pylist()
    assert back[:5] == rows[:5]
    assert math.copysign(1.0, back[1]["d"]) == -1.0
    assert back[5]["s"] == "last" and back[5]["i"] == 42 and math.isnan(back[5]["d"])
    assert read(data).schema == pa.schema([("s", pa.string()), ("i", pa.int64()), ("d", pa.float64())])


@pytest.mark.parametrize("length", [1, 2, 7, 8, 9, 15, 16, 17, 64, 1001])
def test_nulls_anywhere(length: int) -> None:
    # definition levels: every pattern of nulls (an RLE run when all alike, bit-packed otherwise) must decode
    patterns = [
        [False] * length,
        [True] * length,
        [i % 2 == 0 for i in range(length)],
        [i % 3 == 1 for i in range(length)],
        [i == length - 1 for i in range(length)],
        [i == 0 for i in range(length)],
    ]
    for nulls in patterns:
        rows = [
            {"s": None if n else str(i), "i": None if n else i, "d": None if n else i / 2} for i, n in enumerate(nulls)
        ]
        assert read(parquet.write(SCHEMA, rows)[0]).to_pylist() == rows, nulls


def test_the_file_layout() -> None:
    data, _ = parquet.write(SCHEMA, [{"s": "a", "i": 1, "d": 1.0}] * 5, row_group_rows=2)
    assert data[:4] == data[-4:] == b"PAR1"
    footer_length = struct.unpack("<I", data[-8:-4])[0]
    assert 0 < footer_length < len(data) - 12
    metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    assert metadata.created_by == "handpipe" and metadata.num_rows == 5 and metadata.num_row_groups == 3
    for g in range(3):
        for c in range(3):
            column = metadata.row_group(g).column(c)
            assert column.compression == "GZIP" and set(column.encodings) == {"PLAIN", "RLE"}
            assert column.num_values == metadata.row_group(g).num_rows and not column.has_dictionary_page
            assert column.total_compressed_size > 0 and column.total_uncompressed_size > 0
    assert metadata.row_group(0).column(0).data_page_offset == 4


def test_the_same_rows_give_the_same_bytes() -> None:
    rows = export_rows(6, job_id="job_x")
    assert exports.to_parquet(iter(rows)) == exports.to_parquet(iter(list(rows)))


def test_bad_input_is_refused_with_the_column_named() -> None:
    with pytest.raises(TypeError, match="column 's'"):
        parquet.write(SCHEMA, [{"s": 3, "i": 1, "d": 1.0}])
    with pytest.raises(TypeError, match="column 'i'"):
        parquet.write(SCHEMA, [{"s": "a", "i": 1.5, "d": 1.0}])
    with pytest.raises(TypeError, match="column 'd'"):
        parquet.write(SCHEMA, [{"s": "a", "i": 1, "d": "1.0"}])
    with pytest.raises(KeyError):
        parquet.write(SCHEMA, [{"s": "a", "i": 1}])
    with pytest.raises(ValueError, match="type must be one of"):
        parquet.write([("b", "boolean")], [])
    with pytest.raises(ValueError, match="unique"):
        parquet.write([("a", parquet.INT64), ("a", parquet.DOUBLE)], [])
    with pytest.raises(ValueError, match="row_group_rows"):
        parquet.write(SCHEMA, [], row_group_rows=0)
