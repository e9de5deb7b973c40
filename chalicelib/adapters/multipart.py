"""S3 multipart uploads for big videos, behind one small class that takes the API's S3 client: start,
presigned part URLs (SigV4, each signed for its part's exact size), the parts S3 holds, complete, abort."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.shared.storage import StorageUnavailable

# S3's own limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
MIN_PART_BYTES = 5 * 1024**2  # every part but the last
MAX_PART_BYTES = 5 * 1024**3
MAX_PARTS = 10_000
MAX_SINGLE_PUT_BYTES = 5 * 1024**3


class UploadMissing(Exception):
    """S3 has no such multipart upload (completed, aborted, or expired by a lifecycle rule)."""


@dataclass(frozen=True)
class UploadedPart:
    part_number: int
    etag: str  # without quotes
    size_bytes: int


def part_plan(size_bytes: int, preferred_part_bytes: int) -> tuple[int, int]:
    """(part size, part count) for a file: the preferred size, at least S3's 5 MiB, grown to a whole
    MiB that needs at most 10,000 parts (50 GB in 16 MiB parts is 3,200 of them)."""
    if size_bytes <= 0:
        raise ValueError(f"size_bytes must be positive, got {size_bytes}")
    mib = 1024**2
    needed = -(-size_bytes // MAX_PARTS)  # the smallest part size that fits in MAX_PARTS
    part = max(preferred_part_bytes, MIN_PART_BYTES, -(-needed // mib) * mib)
    if part > MAX_PART_BYTES:
        raise ValueError(f"{size_bytes} bytes do not fit in {MAX_PARTS} parts of at most {MAX_PART_BYTES} bytes")
    return part, -(-size_bytes // part)


def part_length(number: int, size_bytes: int, part_bytes: int) -> int:
    """The exact size of part `number` (1-based): all are `part_bytes` but the last, which holds the rest."""
    start = (number - 1) * part_bytes
    return max(0, min(part_bytes, size_bytes - start))


class MultipartStore:
    def __init__(self, s3_client: Any, bucket: str) -> None:
        self.s3 = s3_client
        self.bucket = bucket

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.s3, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in ("NoSuchUpload", "404"):
                raise UploadMissing(f"S3 has no multipart upload {kwargs.get('UploadId', '')!r}") from None
            raise StorageUnavailable(f"S3 {operation} failed: {error}") from error
        except BotoCoreError as error:
            raise StorageUnavailable(f"S3 {operation} failed: {error}") from error

    def start(self, key: str, content_type: str) -> str:
        """A new multipart upload of `key`; its upload id."""
        upload_id: str = self._call("create_multipart_upload", Key=key, ContentType=content_type)["UploadId"]
        return upload_id

    def presign_part(self, key: str, upload_id: str, part_number: int, length: int, expires_s: int) -> str:
        """A URL for one PUT of part `part_number`, signed for exactly `length` bytes."""
        url: str = self.s3.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": upload_id,
                "PartNumber": part_number,
                "ContentLength": length,
            },
            ExpiresIn=expires_s,
        )
        return url

    def parts(self, key: str, upload_id: str) -> Iterator[UploadedPart]:
        """The parts S3 holds, in part order, following ListParts' pages (1,000 parts a page)."""
        marker = 0
        while True:
            page = self._call("list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for part in page.get("Parts", []):
                yield UploadedPart(int(part["PartNumber"]), str(part["ETag"]).strip('"'), int(part["Size"]))
            if not page.get("IsTruncated"):
                return
            marker = int(page["NextPartNumberMarker"])

    def complete(self, key: str, upload_id: str, parts: Sequence[UploadedPart]) -> None:
        self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.part_number, "ETag": f'"{p.etag}"'} for p in parts]},
        )

    def abort(self, key: str, upload_id: str) -> bool:
        """Abort the upload and free its parts; False when S3 had no such upload any more."""
        try:
            self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except UploadMissing:
            return False
        return True
