"""AWS plumbing shared by the CLI, the sensors and the tests.

boto3 follows its own configuration (AWS_ENDPOINT_URL, AWS_REGION, credentials), so the
same calls reach the local endpoint in the demo and tests, and real AWS in production.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from botocore.exceptions import ClientError

from gaming_pipeline.lib.settings import DEFAULT_QUEUE_NAME

# A message the sensor cannot understand is retried this often, then parked on the
# dead-letter queue for a person to look at.
MAX_RECEIVES = 5


def endpoint(service: str, environ: Mapping[str, str] | None = None) -> str:
    """The endpoint boto3 uses for a service (its own AWS_ENDPOINT_URL_<SERVICE>, else
    AWS_ENDPOINT_URL), for the JVM and delta-rs clients that follow it; "" means AWS itself."""
    env = os.environ if environ is None else environ
    return env.get(f"AWS_ENDPOINT_URL_{service}") or env.get("AWS_ENDPOINT_URL") or ""


def region(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def client(service: str, config=None):
    # Here, not at the top: boto3 takes a tenth of a second to import, and most runs load this
    # module (for its endpoint and region helpers) without calling AWS.
    import boto3

    return boto3.client(service, region_name=os.environ.get("AWS_REGION") or None, config=config)


@dataclass(frozen=True)
class LandingPath:
    bucket: str
    topic_arn: str
    queue_url: str
    dead_letter_queue_url: str


def ensure_bucket(s3, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    region = s3.meta.region_name
    kwargs = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)


def keeps_versions(s3, bucket: str) -> bool:
    """Whether the bucket keeps the earlier versions of objects rewritten or deleted (its
    versioning on, or suspended with versions kept from before)."""
    return s3.get_bucket_versioning(Bucket=bucket).get("Status", "") in ("Enabled", "Suspended")


def provision(bucket: str, queue_name: str = DEFAULT_QUEUE_NAME) -> LandingPath:
    """Create, or leave as they are, the bucket, the SNS topic fed by the bucket's
    ObjectCreated notifications, the SQS queue subscribed to it and its dead-letter queue.
    Safe to run again: every call here is idempotent."""
    s3, sns, sqs, sts = client("s3"), client("sns"), client("sqs"), client("sts")
    account = sts.get_caller_identity()["Account"]
    ensure_bucket(s3, bucket)

    dlq_url = sqs.create_queue(QueueName=f"{queue_name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    topic_arn = sns.create_topic(Name=f"{queue_name}-topic")["TopicArn"]
    sns.set_topic_attributes(
        TopicArn=topic_arn,
        AttributeName="Policy",
        AttributeValue=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "s3.amazonaws.com"},
                        "Action": "SNS:Publish",
                        "Resource": topic_arn,
                        "Condition": {
                            "ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"},
                            "StringEquals": {"aws:SourceAccount": account},
                        },
                    }
                ],
            }
        ),
    )
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}
            ),
            # Long enough for a sensor tick to finish with a message before it reappears.
            "VisibilityTimeout": "120",
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sns.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": queue_arn,
                            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                        }
                    ],
                }
            ),
        },
    )
    subscribed = any(
        sub["Endpoint"] == queue_arn
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic_arn)
        for sub in page["Subscriptions"]
    )
    if not subscribed:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    # S3 sends an s3:TestEvent whenever this is set, so it is set only when it differs.
    notification = {
        "TopicConfigurations": [
            {
                "Id": "gaming-pipeline-object-created",
                "TopicArn": topic_arn,
                "Events": ["s3:ObjectCreated:*"],
            }
        ]
    }
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    if current.get("TopicConfigurations") != notification["TopicConfigurations"]:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=notification)
    return LandingPath(bucket, topic_arn, queue_url, dlq_url)


def provision_stream(kinesis, stream: str, shards: int = 2) -> str:
    """Create, or leave as it is, a Kinesis stream of `shards` shards (the seed's source, read
    by lib/kinesis.py); its ARN once it is active."""
    from gaming_pipeline.lib.kinesis import stream_name

    try:
        kinesis.create_stream(StreamName=stream_name(stream), ShardCount=shards)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
    kinesis.get_waiter("stream_exists").wait(StreamName=stream_name(stream), WaiterConfig={"Delay": 1})
    return kinesis.describe_stream_summary(StreamName=stream_name(stream))["StreamDescriptionSummary"][
        "StreamARN"
    ]


def provision_pii_keys(kms, data_key_alias: str, mac_key_alias: str) -> dict[str, str]:
    """Create, or leave as they are, the vault's two KMS keys under their aliases: a symmetric
    key (rotated yearly) wrapping players' data keys, and the HMAC key pseudonyms derive from
    (HMAC keys do not rotate: pseudonyms must stay the same). Returns alias: key id."""
    aliases = {
        alias["AliasName"]: alias.get("TargetKeyId", "")
        for page in kms.get_paginator("list_aliases").paginate()
        for alias in page["Aliases"]
    }
    specs = {
        data_key_alias: {"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT"},
        mac_key_alias: {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
    }
    for alias, spec in specs.items():
        if not aliases.get(alias):
            key_id = kms.create_key(Description=f"gaming_pipeline PII vault ({alias})", **spec)[
                "KeyMetadata"
            ]["KeyId"]
            if spec["KeySpec"] == "SYMMETRIC_DEFAULT":
                kms.enable_key_rotation(KeyId=key_id)
            kms.create_alias(AliasName=alias, TargetKeyId=key_id)
            aliases[alias] = key_id
    return {alias: aliases[alias] for alias in specs}


def queue_url(configured: str, queue_name: str = DEFAULT_QUEUE_NAME) -> str:
    return configured or client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]
