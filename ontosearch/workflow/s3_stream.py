"""Reading and writing S3 objects as streams, so Split and Merge hold a bounded amount in memory
and in /tmp whatever the size of the input and output files.

S3 multipart upload rules (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html):
parts of 5 MiB to 5 GiB except the last, at most 10,000 parts, objects up to 5 TiB.
"""

from __future__ import annotations

import io
from typing import Any

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10_000
# 64 MiB parts: 10,000 of them hold 625 GiB, and a Lambda holds one part in memory at a time
PART_BYTES = 64 * 1024 * 1024


class ReadableBody(io.RawIOBase):
    """An S3 GetObject body as a raw binary stream, so io.BufferedReader (and a text wrapper over
    it) reads it incrementally."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_object(s3: Any, bucket: str, key: str, buffer_size: int = 1 << 20) -> io.BufferedReader:
    """A buffered binary stream over one object (raises the client's error if it cannot be read)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    return io.BufferedReader(ReadableBody(body), buffer_size=buffer_size)


class MultipartWriter:
    """Write bytes to one S3 object as they come: a single PutObject when the whole fits one part,
    else a multipart upload of PART_BYTES parts; an upload that fails is aborted."""

    def __init__(self, s3: Any, bucket: str, key: str, content_type: str,
                 part_bytes: int = PART_BYTES) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes, got {part_bytes}")
        self.s3, self.bucket, self.key, self.content_type = s3, bucket, key, content_type
        self.part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= self.part_bytes:
            self._flush_part()

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        if len(self._parts) >= MAX_PARTS:
            raise ValueError(f"s3://{self.bucket}/{self.key} would need more than {MAX_PARTS} parts")
        number = len(self._parts) + 1
        answer = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                     PartNumber=number, Body=bytes(self._buffer))
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer.clear()

    def close(self) -> None:
        if self._upload_id is None:
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer),
                               ContentType=self.content_type)
            self._buffer.clear()
            return
        if self._buffer:
            self._flush_part()
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                          MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        if self._upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
