"""A Kinesis stream and an S3 bucket in memory, for the unit tests of lib/kinesis.py's reading
logic where moto's server cannot go: moto moves a split shard's records into its children
and copies merged shards' into theirs, keeps no retention and never throttles. This one
follows Kinesis's documented behaviour: a closed shard keeps its records and ends its
iterators at its end, children start empty, sequence numbers grow across the stream, and
retention trims the oldest records."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from botocore.exceptions import ClientError


def _error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class FakeKinesis:
    def __init__(self, shards: int, now: float = 1_800_000_000.0):
        self.now = now
        self.sequence = 0
        self.shards: dict[str, dict] = {}
        self.throttle_reads = 0
        self.fail_reads = 0
        self.gone = False
        self.reads = 0
        # The PutRecords calls (counted from 1) that refuse every other record (a busy
        # shard), and those that fail whole.
        self.put_calls = 0
        self.refusing_put_calls: set[int] = set()
        self.failing_put_calls: set[int] = set()
        for _ in range(shards):
            self._new_shard()

    def _new_shard(self, parent: str | None = None, adjacent: str | None = None) -> str:
        shard_id = f"shardId-{len(self.shards):012d}"
        self.shards[shard_id] = {
            "records": [],
            "closed": False,
            "parent": parent,
            "adjacent": adjacent,
            "trimmed": 0,
        }
        return shard_id

    def put(self, shard_id: str, data: bytes, partition_key: str = "p") -> str:
        self.sequence += 1
        shard = self.shards[shard_id]
        assert not shard["closed"]
        shard["records"].append((self.sequence, data, self.now, partition_key))
        return str(self.sequence)

    def put_records(self, Records, StreamName=None, StreamARN=None):  # noqa: N803
        """Each record on an open shard by its hash key (the explicit one, else the MD5 of its
        partition key), the open shards sharing the key space in order."""
        self._check("PutRecords")
        self.put_calls += 1
        if self.put_calls in self.failing_put_calls:
            raise ClientError(
                {"Error": {"Code": "InternalFailure"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                "PutRecords",
            )
        refusing = self.put_calls in self.refusing_put_calls
        answers = []
        for index, entry in enumerate(Records):
            if refusing and index % 2:
                answers.append({"ErrorCode": "ProvisionedThroughputExceededException"})
                continue
            key = entry.get("ExplicitHashKey") or str(
                int.from_bytes(hashlib.md5(entry["PartitionKey"].encode()).digest(), "big")
            )
            shards = self.open_shards()
            shard_id = shards[int(key) * len(shards) >> 128]
            answers.append({"SequenceNumber": self.put(shard_id, entry["Data"], entry["PartitionKey"])})
        failed = sum("ErrorCode" in answer for answer in answers)
        return {"FailedRecordCount": failed, "Records": answers}

    def open_shards(self) -> list[str]:
        return [shard_id for shard_id, shard in self.shards.items() if not shard["closed"]]

    def split(self, shard_id: str) -> tuple[str, str]:
        self.shards[shard_id]["closed"] = True
        return self._new_shard(shard_id), self._new_shard(shard_id)

    def merge(self, shard_id: str, adjacent: str) -> str:
        self.shards[shard_id]["closed"] = self.shards[adjacent]["closed"] = True
        return self._new_shard(shard_id, adjacent)

    def trim(self, before: float) -> None:
        """Retention: records that arrived before `before` are gone."""
        for shard in self.shards.values():
            kept = [record for record in shard["records"] if record[2] >= before]
            shard["trimmed"] += len(shard["records"]) - len(kept)
            shard["records"] = kept

    def _check(self, operation: str) -> None:
        if self.gone:
            raise _error("ResourceNotFoundException", operation)

    def list_shards(self, StreamName=None, StreamARN=None, NextToken=None):  # noqa: N803 (boto3's names)
        self._check("ListShards")
        shards = []
        for shard_id, shard in self.shards.items():
            described = {"ShardId": shard_id, "SequenceNumberRange": {"StartingSequenceNumber": "0"}}
            if shard["parent"]:
                described["ParentShardId"] = shard["parent"]
            if shard["adjacent"]:
                described["AdjacentParentShardId"] = shard["adjacent"]
            if shard["closed"]:
                described["SequenceNumberRange"]["EndingSequenceNumber"] = str(self.sequence)
            shards.append(described)
        return {"Shards": shards}

    def describe_stream_summary(self, StreamName=None, StreamARN=None):  # noqa: N803
        self._check("DescribeStreamSummary")
        return {"StreamDescriptionSummary": {"RetentionPeriodHours": 24}}

    def get_shard_iterator(
        self, ShardId, ShardIteratorType, StreamName=None, StreamARN=None, StartingSequenceNumber=None
    ):  # noqa: N803
        self._check("GetShardIterator")
        after = int(StartingSequenceNumber) if ShardIteratorType == "AFTER_SEQUENCE_NUMBER" else 0
        return {"ShardIterator": json.dumps([ShardId, after])}

    def get_records(self, ShardIterator, Limit=10_000):  # noqa: N803
        self.reads += 1
        if self.throttle_reads:
            self.throttle_reads -= 1
            raise _error("ProvisionedThroughputExceededException", "GetRecords")
        if self.fail_reads:
            self.fail_reads -= 1
            raise ClientError(
                {"Error": {"Code": "InternalFailure"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                "GetRecords",
            )
        shard_id, after = json.loads(ShardIterator)
        shard = self.shards[shard_id]
        later = [record for record in shard["records"] if record[0] > after]
        page = later[:Limit]
        last = page[-1][0] if page else after
        at_end = len(page) == len(later)
        newest = shard["records"][-1][2] if shard["records"] else self.now
        return {
            "Records": [
                {
                    "SequenceNumber": str(sequence),
                    "Data": data,
                    "PartitionKey": partition_key,
                    "ApproximateArrivalTimestamp": datetime.fromtimestamp(arrived, UTC),
                }
                for sequence, data, arrived, partition_key in page
            ],
            "NextShardIterator": None if shard["closed"] and at_end else json.dumps([shard_id, last]),
            "MillisBehindLatest": 0 if at_end else int((newest - page[-1][2]) * 1000),
        }


class FakeS3:
    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.metadata: dict[tuple[str, str], dict] = {}
        self.puts = 0

    def put_object(self, Bucket, Key, Body, Metadata=None, **_):  # noqa: N803
        self.puts += 1
        self.objects[(Bucket, Key)] = Body
        self.metadata[(Bucket, Key)] = Metadata or {}
        return {"ETag": f'"{hashlib.md5(Body).hexdigest()}"'}

    def head_object(self, Bucket, Key):  # noqa: N803
        if (Bucket, Key) not in self.objects:
            raise _error("404", "HeadObject")
        return {"Metadata": self.metadata[(Bucket, Key)]}

    def _listed(self, bucket: str, prefix: str) -> list[dict]:
        return [
            {
                "Key": key,
                "ETag": hashlib.md5(body).hexdigest(),
                "Size": len(body),
                "LastModified": datetime.now(UTC),
            }
            for (b, key), body in sorted(self.objects.items())
            if b == bucket and key.startswith(prefix)
        ]

    def list_objects_v2(self, Bucket, Prefix, MaxKeys=1000):  # noqa: N803
        return {"Contents": self._listed(Bucket, Prefix)[:MaxKeys]}

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        fake = self

        class Paginator:
            def paginate(self, Bucket, Prefix):  # noqa: N803
                yield {"Contents": fake._listed(Bucket, Prefix)}

        return Paginator()
