"""The part plan of a multipart upload keeps within S3's real limits: parts of at least 5 MiB (all but
the last), at most 10,000 parts, so files up to 50 GiB (and beyond) fit."""

from __future__ import annotations

import pytest

from chalicelib.adapters.multipart import MAX_PARTS, MIN_PART_BYTES, part_length, part_plan

MIB, GIB = 1024**2, 1024**3


@pytest.mark.parametrize("size", [1, 5 * MIB, 100 * MIB + 1, 5 * GIB, 50 * GIB, 50 * 10**9, 160 * GIB + 7])
@pytest.mark.parametrize("preferred", [1, 5 * MIB, 16 * MIB])
def test_every_size_fits_in_s3s_limits(size: int, preferred: int) -> None:
    part, count = part_plan(size, preferred)
    assert part >= MIN_PART_BYTES and part >= preferred and part % MIB == 0
    assert 1 <= count <= MAX_PARTS and (count - 1) * part < size <= count * part
    lengths = [part_length(n, size, part) for n in range(1, count + 1)]
    assert sum(lengths) == size and all(n == part for n in lengths[:-1]) and 0 < lengths[-1] <= part


def test_50_gib_in_16_mib_parts_and_a_larger_part_when_the_count_would_pass_10000() -> None:
    assert part_plan(50 * GIB, 16 * MIB) == (16 * MIB, 3200)
    assert part_plan(50 * GIB, 5 * MIB) == (6 * MIB, 8534)  # 5 MiB would need 10,240 parts
    with pytest.raises(ValueError, match="do not fit"):
        part_plan(MAX_PARTS * 5 * GIB + 1, 16 * MIB)
    with pytest.raises(ValueError):
        part_plan(0, 16 * MIB)
