"""S3 access for videos and results, behind one small class that takes its boto3 client in the
constructor. The worker image copies this file too, so both sides read and write the same way."""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.shared.results import from_gzip, to_gzip

_MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class StorageUnavailable(Exception):
    """S3 could not be reached or refused the request; worth retrying later."""


class ObjectMissing(Exception):
    """The object does not exist."""


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING_CODES


class ObjectStore:
    def __init__(self, s3_client: Any, bucket: str) -> None:
        self.s3 = s3_client
        self.bucket = bucket

    def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.s3, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            if _is_missing(error):
                raise ObjectMissing(f"s3://{self.bucket}/{kwargs.get('Key', '')} does not exist") from None
            raise StorageUnavailable(f"S3 {operation} failed: {error}") from error
        except BotoCoreError as error:
            raise StorageUnavailable(f"S3 {operation} failed: {error}") from error

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's size and type, or None when it does not exist."""
        try:
            response = self._call("head_object", Key=key)
        except ObjectMissing:
            return None
        return {
            "size": response.get("ContentLength"),
            "content_type": response.get("ContentType"),
            "etag": str(response.get("ETag") or "").strip('"'),
        }

    def download(self, key: str, path: str) -> None:
        try:
            self.s3.download_file(self.bucket, key, path)
        except ClientError as error:
            if _is_missing(error):
                raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist") from None
            raise StorageUnavailable(f"S3 download of {key} failed: {error}") from error
        except BotoCoreError as error:
            raise StorageUnavailable(f"S3 download of {key} failed: {error}") from error

    def get_bytes(self, key: str) -> bytes:
        body: bytes = self._call("get_object", Key=key)["Body"].read()
        return body

    def get_range(self, key: str, length: int) -> bytes:
        """The first `length` bytes of the object (all of it when it is shorter)."""
        body: bytes = self._call("get_object", Key=key, Range=f"bytes=0-{length - 1}")["Body"].read()
        return body

    def open_ranged(self, key: str, *, block_size: int = 1 << 20, cache_blocks: int = 16) -> RangedReader:
        """The object as a seekable binary file that fetches only the byte ranges that are read."""
        info = self.head(key)
        if info is None:
            raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist")
        return RangedReader(
            self, key, int(info["size"] or 0), etag=info["etag"], block_size=block_size, cache_blocks=cache_blocks
        )

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", Key=key, Body=data, ContentType=content_type)

    def put_result(self, key: str, result: dict[str, Any]) -> None:
        self.put_bytes(key, to_gzip(result), "application/gzip")

    def get_result(self, key: str) -> dict[str, Any]:
        return from_gzip(self.get_bytes(key))

    def keys(self, prefix: str) -> Iterator[str]:
        token: dict[str, str] = {}
        while True:
            page = self._call("list_objects_v2", Prefix=prefix, **token)
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (our own folders only: never a caller's key, which
        would take whatever merely starts with it); the number deleted."""
        keys = list(self.keys(prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            # S3 answers 200 even when it refuses keys (AccessDenied per key): those come back in Errors.
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageUnavailable(
                    f"S3 refused to delete {len(errors)} of {len(batch)} object(s) under {prefix}, "
                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(keys)

    def delete_key(self, key: str) -> int:
        """Delete exactly this key (a plain DeleteObject: no listing, so nothing that merely starts
        with it); 1 when it was there, 0 when it was not."""
        if self.head(key) is None:
            return 0
        self._call("delete_object", Key=key)
        return 1

    def presign_upload(self, key: str, content_type: str, size: int, expires_s: int) -> str:
        """A URL for one PUT of this object, of this type and exactly this size: the signature covers
        all three, so the URL cannot be used for another object or a bigger file."""
        url: str = self.s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size},
            ExpiresIn=expires_s,
        )
        return url

    def presign_download(self, key: str, expires_s: int, filename: str | None = None) -> str:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        return url

    def check(self) -> None:
        """Raise StorageUnavailable unless the bucket answers."""
        self._call("head_bucket")


class RangedReader(io.RawIOBase):
    """A read-only, seekable file over one S3 object through `Range` GETs, so a decoder reads the
    container index and its own share of the frames instead of downloading the whole video.

    Reads go through aligned blocks kept in a small LRU cache (an MP4's index and the frames near it
    are read more than once); a run of sequential blocks doubles the next fetch, up to `max_fetch`,
    so a long sequential read costs few requests. `bytes_fetched` counts what S3 sent."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        size: int,
        *,
        etag: str = "",
        block_size: int = 1 << 20,
        cache_blocks: int = 16,
        max_fetch_blocks: int = 4,
    ) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.size = size
        self.etag = etag  # which version of the object this is: derived data (the frame index) is keyed by it
        self.block_size = block_size
        self.cache_blocks = max(cache_blocks, max_fetch_blocks + 1)
        self.max_fetch_blocks = max_fetch_blocks
        self.bytes_fetched = 0
        self.requests = 0
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._last_fetched: int | None = None
        self._run = 1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), max(0, self.size - self._position))
        done = 0
        while done < wanted:
            number, offset = divmod(self._position, self.block_size)
            block = self._block(number)
            chunk = block[offset : offset + wanted - done]
            if not chunk:
                break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._position += len(chunk)
        return done

    def _block(self, number: int) -> bytes:
        if number in self._blocks:
            self._blocks.move_to_end(number)
            return self._blocks[number]
        sequential = self._last_fetched is not None and number == self._last_fetched + 1
        self._run = min(self._run * 2, self.max_fetch_blocks) if sequential else 1
        last_block = max(0, (self.size - 1) // self.block_size)
        count = min(self._run, last_block - number + 1)
        start = number * self.block_size
        end = min(self.size, (number + count) * self.block_size) - 1
        data: bytes = self.store._call("get_object", Key=self.key, Range=f"bytes={start}-{end}")["Body"].read()
        self.requests += 1
        self.bytes_fetched += len(data)
        for i in range(count):
            self._blocks[number + i] = data[i * self.block_size : (i + 1) * self.block_size]
            self._blocks.move_to_end(number + i)
        while len(self._blocks) > self.cache_blocks:
            self._blocks.popitem(last=False)
        self._last_fetched = number + count - 1
        return self._blocks[number]
