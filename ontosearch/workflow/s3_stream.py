"""Reading and writing S3 objects as streams, so Split and Merge hold a bounded amount in memory
and in /tmp whatever the size of the input and output files.

S3 multipart upload rules (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html):
parts of 5 MiB to 5 GiB except the last, at most 10,000 parts, objects up to 5 TiB.
"""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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
    else a multipart upload of PART_BYTES parts; an upload that fails is aborted.

    With threads > 1 up to that many parts upload while the next one fills (the writer does not
    wait for S3 on every part); memory holds at most threads + 1 parts. boto3 clients may be
    shared between threads (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/clients.html,
    "Multithreading or multiprocessing with clients")."""

    def __init__(self, s3: Any, bucket: str, key: str, content_type: str,
                 part_bytes: int = PART_BYTES, threads: int = 1) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts are at least {MIN_PART_BYTES} bytes, got {part_bytes}")
        self.s3, self.bucket, self.key, self.content_type = s3, bucket, key, content_type
        self.part_bytes = part_bytes
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(max_workers=self.threads) if self.threads > 1 else None
        self._in_flight: deque[Future[Any]] = deque()
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= self.part_bytes:
            self._flush_part()

    def _upload(self, number: int, body: bytearray) -> None:
        answer = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                     PartNumber=number, Body=body)
        self._parts[number - 1]["ETag"] = answer["ETag"]

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type)["UploadId"]
        if len(self._parts) >= MAX_PARTS:
            raise ValueError(f"s3://{self.bucket}/{self.key} would need more than {MAX_PARTS} parts")
        number = len(self._parts) + 1
        self._parts.append({"PartNumber": number, "ETag": None})
        body, self._buffer = self._buffer, bytearray()  # handed over, not copied
        if self._pool is None:
            self._upload(number, body)
            return
        while len(self._in_flight) >= self.threads:
            self._in_flight.popleft().result()
        self._in_flight.append(self._pool.submit(self._upload, number, body))

    def _wait(self) -> None:
        while self._in_flight:
            self._in_flight.popleft().result()

    def close(self) -> None:
        try:
            if self._upload_id is None:
                self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer),
                                   ContentType=self.content_type)
                self._buffer.clear()
                return
            if self._buffer:
                self._flush_part()
            self._wait()
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id,
                                              MultipartUpload={"Parts": self._parts})
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def abort(self) -> None:
        for future in self._in_flight:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # no part may land after the abort
        self._in_flight.clear()
        if self._upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
