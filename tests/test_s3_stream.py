"""Split's and Merge's S3 streams over moto: the output is uploaded in parts as it is written.

S3's multipart rules (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): parts
of at least 5 MiB except the last, at most 10,000 parts; moto enforces the minimum part size.
"""

from __future__ import annotations

import moto_s3
import pytest

from ontosearch.workflow.s3_stream import MIN_PART_BYTES, MultipartWriter, open_object

BUCKET = "ontosearch-stream"


@pytest.fixture
def s3(monkeypatch):
    yield from moto_s3.bucket(monkeypatch, BUCKET)


def test_a_large_output_goes_up_in_parts_and_reads_back_whole(s3) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    with MultipartWriter(s3, BUCKET, "out.csv", "text/csv", part_bytes=MIN_PART_BYTES) as out:
        for _ in range(12):
            out.write(piece)
    head = s3.head_object(Bucket=BUCKET, Key="out.csv", PartNumber=1)
    assert head["PartsCount"] == 3  # 5 + 5 + 2 MiB
    assert s3.get_object(Bucket=BUCKET, Key="out.csv")["Body"].read() == piece * 12
    assert open_object(s3, BUCKET, "out.csv").read() == piece * 12


def test_a_small_output_is_one_put_and_a_failed_upload_is_aborted(s3) -> None:
    with MultipartWriter(s3, BUCKET, "small.csv", "text/csv") as out:
        out.write(b"a,b\n")
    assert s3.get_object(Bucket=BUCKET, Key="small.csv")["Body"].read() == b"a,b\n"
    with pytest.raises(RuntimeError), MultipartWriter(s3, BUCKET, "broken.csv", "text/csv",
                                                      part_bytes=MIN_PART_BYTES) as out:
        out.write(b"x" * (MIN_PART_BYTES + 1))
        raise RuntimeError("the merge failed half way")
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert "broken.csv" not in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_parts_below_the_s3_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        MultipartWriter(None, BUCKET, "k", "text/csv", part_bytes=MIN_PART_BYTES - 1)
