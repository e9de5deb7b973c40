"""S3 objects of the local stack kept on disk, so that what moto (which holds everything in memory)
was told to store survives a restart or a kill -9 of `handpipe up`: a WSGI layer in front of moto
writes each object to a file before S3's answer goes out, and `restore` puts them back on start."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Query parameters of a PUT, POST or DELETE on a key that change something other than the object's
# bytes and type (a part of a multipart upload, tags, ACLs): the object is written when it is whole.
_NOT_THE_OBJECT = {"uploadId", "partNumber", "uploads", "tagging", "acl", "retention", "legal-hold", "restore"}
_KEPT_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    path: Path
    attributes: dict[str, Any]  # ContentType and the other headers put_object takes, and Metadata


class DiskObjects:
    """One file per object under root/<bucket>/: a line of JSON (the key, its type and metadata),
    then the bytes. A file is written under another name and renamed into place, so a kill leaves
    either the old object or the new one, never half of one."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        # Keys may be 1,024 bytes with any characters; a file name may not.
        return self.root / bucket / (hashlib.sha256(key.encode()).hexdigest() + ".obj")

    def save(self, bucket: str, key: str, body: IO[bytes], attributes: dict[str, Any]) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(temporary, "wb") as file:
            file.write(json.dumps({"key": key, **attributes}).encode() + b"\n")
            while chunk := body.read(_CHUNK):
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def remove(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def objects(self, bucket: str) -> Iterator[StoredObject]:
        folder = self.root / bucket
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.obj")):
            with open(path, "rb") as file:
                header = json.loads(file.readline())
            key = header.pop("key")
            yield StoredObject(bucket=bucket, key=key, path=path, attributes=header)

    def open_body(self, stored: StoredObject) -> IO[bytes]:
        """The object's bytes, as a file positioned after the header line."""
        file = open(stored.path, "rb")  # noqa: SIM115 - the caller closes it
        file.readline()
        return file


class MirroringApp:
    """WSGI middleware for moto's server: after S3 answers a request that wrote or deleted an object
    of one of `buckets` with success, the object as S3 now holds it is copied to (or removed from)
    disk, and only then does the answer go back. Everything else passes straight through."""

    def __init__(self, app: WsgiApp, disk: DiskObjects, buckets: Iterable[str]) -> None:
        self.app = app
        self.disk = disk
        self.buckets = set(buckets)
        self.s3: S3Client | None = None  # set once the server's address is known
        self._locks = [threading.Lock() for _ in range(64)]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        target = self._target(environ) if self.s3 is not None else None
        if target is None:
            return self.app(environ, start_response)
        bucket, keys = target
        if keys is None:  # DeleteObjects names its keys in the body, read here and handed on
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = BytesIO(body)
            keys = _keys_to_delete(body)
        answer: dict[str, Any] = {}
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answer.update(status=status, headers=headers, exc_info=exc_info)
            return chunks.append

        result = self.app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if answer["status"].startswith("2"):
            for key in keys:
                self.sync(bucket, key)
        start_response(answer["status"], answer["headers"], answer["exc_info"])
        return chunks

    def _target(self, environ: dict[str, Any]) -> tuple[str, list[str] | None] | None:
        """(bucket, keys) when the request may change objects; keys None means "read the body"."""
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("PUT", "POST", "DELETE"):
            return None
        raw_uri = environ.get("REQUEST_URI") or environ.get("RAW_URI") or ""
        raw_path, _, raw_query = raw_uri.partition("?")
        if raw_path.startswith(("http://", "https://")):
            raw_path = urllib.parse.urlsplit(raw_path).path
        bucket, _, raw_key = raw_path.lstrip("/").partition("/")
        if bucket not in self.buckets:
            return None
        params = set(urllib.parse.parse_qs(raw_query, keep_blank_values=True))
        if not raw_key:
            return (bucket, None) if method == "POST" and "delete" in params else None
        key = urllib.parse.unquote(raw_key)
        if method == "POST" and params == {"uploadId"}:
            return bucket, [key]  # CompleteMultipartUpload: the object is whole now
        if params & _NOT_THE_OBJECT:
            return None
        return (bucket, [key]) if method in ("PUT", "DELETE") else None

    def sync(self, bucket: str, key: str) -> None:
        """Make the file match what S3 holds now. One key at a time: whoever reads S3 last writes
        last, so two writes of one key cannot leave the older one on disk."""
        assert self.s3 is not None
        with self._locks[hash((bucket, key)) % len(self._locks)]:
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    self.disk.remove(bucket, key)
                    return
                raise
            attributes: dict[str, Any] = {name: response[name] for name in _KEPT_HEADERS if response.get(name)}  # type: ignore[literal-required]
            if response.get("Metadata"):
                attributes["Metadata"] = dict(response["Metadata"])
            body = response["Body"]
            try:
                self.disk.save(bucket, key, body, attributes)
            finally:
                body.close()


def restore(s3: S3Client, disk: DiskObjects, bucket: str) -> int:
    """Put every object kept on disk for `bucket` back into S3; returns how many. Run before anything
    writes: it also clears the half-written files a kill left (their PUT was never answered)."""
    for temporary in (disk.root / bucket).glob("*.tmp"):
        temporary.unlink(missing_ok=True)
    count = 0
    for stored in disk.objects(bucket):
        with disk.open_body(stored) as body:
            s3.put_object(Bucket=bucket, Key=stored.key, Body=body, **stored.attributes)
        count += 1
    return count


def _keys_to_delete(body: bytes) -> list[str]:
    """The keys of a DeleteObjects request body (<Delete><Object><Key>...), whatever its namespace."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return []
    return [element.text or "" for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Key"]
