"""handpipe.local.s3disk on a real moto server: every way the stack writes or deletes an object (a PUT, a
presigned PUT, a copy, a multipart upload, a DELETE, a DeleteObjects) reaches the files before S3's
answer, and the files put back into an empty bucket give the same objects."""

from __future__ import annotations

import shutil
import urllib.request
import uuid
from pathlib import Path

from handpipe.local.aws import MotoServer, aws_clients
from handpipe.local.s3disk import DiskObjects, restore


def test_what_s3_answered_for_is_on_disk_and_comes_back(tmp_path: Path) -> None:
    bucket = f"disk-{uuid.uuid4().hex[:10]}"
    with MotoServer(objects_dir=tmp_path / "s3") as server:
        s3, _ = aws_clients(server.endpoint_url)
        s3.create_bucket(Bucket=bucket)
        assert server.keep_on_disk(s3, bucket) == 0
        disk = DiskObjects(tmp_path / "s3")

        s3.put_object(Bucket=bucket, Key="a/one.json", Body=b'{"v": 1}', ContentType="application/json")
        s3.put_object(Bucket=bucket, Key="a/two.bin", Body=b"old", Metadata={"kind": "first"})
        s3.put_object(Bucket=bucket, Key="a/two.bin", Body=b"new", Metadata={"kind": "second"})  # overwritten
        s3.copy_object(Bucket=bucket, Key="a/copy.json", CopySource={"Bucket": bucket, "Key": "a/one.json"})
        big = b"x" * (5 * 1024 * 1024) + b"tail"
        upload = s3.create_multipart_upload(Bucket=bucket, Key="videos/big.mp4", ContentType="video/mp4")
        parts = [
            {
                "PartNumber": n,
                "ETag": s3.upload_part(
                    Bucket=bucket, Key="videos/big.mp4", UploadId=upload["UploadId"], PartNumber=n, Body=chunk
                )["ETag"],
            }
            for n, chunk in ((1, big[: 5 * 1024 * 1024]), (2, big[5 * 1024 * 1024 :]))
        ]
        s3.complete_multipart_upload(
            Bucket=bucket, Key="videos/big.mp4", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
        url = s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": bucket, "Key": "videos/up load.mp4", "ContentType": "video/mp4"},
            ExpiresIn=60,
        )
        request = urllib.request.Request(url, data=b"uploaded", method="PUT", headers={"Content-Type": "video/mp4"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        s3.put_object(Bucket=bucket, Key="gone/one", Body=b"1")
        s3.put_object(Bucket=bucket, Key="gone/two", Body=b"2")
        s3.delete_object(Bucket=bucket, Key="gone/one")
        s3.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": "gone/two"}, {"Key": "a/copy.json"}], "Quiet": True}
        )

        expected = {
            "a/one.json": (b'{"v": 1}', "application/json"),
            "a/two.bin": (b"new", "binary/octet-stream"),
            "videos/big.mp4": (big, "video/mp4"),
            "videos/up load.mp4": (b"uploaded", "video/mp4"),
        }
        stored = {item.key: item for item in disk.objects(bucket)}
        assert sorted(stored) == sorted(expected)
        for key, (body, _) in expected.items():
            with disk.open_body(stored[key]) as file:
                assert file.read() == body, key
        assert stored["a/two.bin"].attributes["Metadata"] == {"kind": "second"}

        # The files, put back into an empty bucket (another name: moto's state is shared by the process).
        copy = f"{bucket}-back"
        shutil.copytree(tmp_path / "s3" / bucket, tmp_path / "s3" / copy)
        (tmp_path / "s3" / copy / "0123.obj.99.1.tmp").write_bytes(b"half of a PUT a kill cut off")
        s3.create_bucket(Bucket=copy)
        assert restore(s3, disk, copy) == len(expected)
        assert not list((tmp_path / "s3" / copy).glob("*.tmp"))
        for key, (body, content_type) in expected.items():
            got = s3.get_object(Bucket=copy, Key=key)
            assert got["Body"].read() == body and got["ContentType"] == content_type, key
        assert s3.head_object(Bucket=copy, Key="a/two.bin")["Metadata"] == {"kind": "second"}


def test_buckets_not_named_pass_through_untouched(tmp_path: Path) -> None:
    kept, other = f"kept-{uuid.uuid4().hex[:10]}", f"other-{uuid.uuid4().hex[:10]}"
    with MotoServer(objects_dir=tmp_path / "s3") as server:
        s3, _ = aws_clients(server.endpoint_url)
        for name in (kept, other):
            s3.create_bucket(Bucket=name)
        server.keep_on_disk(s3, kept)
        s3.put_object(Bucket=other, Key="x", Body=b"not kept")
        assert not (tmp_path / "s3" / other).exists()
        assert s3.get_object(Bucket=other, Key="x")["Body"].read() == b"not kept"
