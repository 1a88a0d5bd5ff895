"""The IAM policies of deploy/iam, each tried on the local endpoint with IAM enforced: the
requests of a role are signed with its own credentials, and each role does its job on the
code's own paths and is refused one thing it must not do.

Where moto's checks differ from AWS's, the policies are translated for it, never widened
beyond what AWS would allow:
- it checks KMS, DynamoDB and Kinesis requests against the resource "*" only: their
  statements are tried for their actions (on "*");
- it evaluates no condition key (a statement with a condition would deny): conditions are
  left out, as they only narrow what a statement allows;
- it names a bucket's HeadBucket `s3:HeadBucket`, where AWS requires `s3:ListBucket`: a
  statement allowing the one allows the other.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from moto.core.authorization import enable_iam_authentication

from gaming_pipeline.ingest_service.delivery import Delivery, StreamSink
from gaming_pipeline.ingest_service.spool import Progress, Record
from gaming_pipeline.lib import aws, erasure
from gaming_pipeline.lib.kinesis import KinesisSource, Positions
from gaming_pipeline.lib.pii import KmsKeys, PiiVault, PlayerErased
from gaming_pipeline.lib.s3_events import ingest_segments
from gaming_pipeline.lib.settings import Settings

POLICIES = Path(__file__).parent.parent / "deploy" / "iam"
DEVICE = "d-iam-1"


def _for_moto(statement: dict) -> dict:
    """The statement as moto checks what AWS would (see above)."""
    actions = statement["Action"]
    moto = {key: value for key, value in statement.items() if key != "Condition"}
    if all(action.startswith(("kms:", "dynamodb:", "kinesis:")) for action in actions):
        moto["Resource"] = "*"
    if "s3:ListBucket" in actions:
        moto["Action"] = [*actions, "s3:HeadBucket"]
    return moto


class Names(dict):
    """The placeholders of the policies, as this test's resources fill them."""

    def render(self, policy_file: str) -> str:
        text = (POLICIES / policy_file).read_text()
        for placeholder, value in self.items():
            text = text.replace(f"<{placeholder}>", value)
        assert "<" not in text, f"{policy_file} has a placeholder the test does not fill"
        policy = json.loads(text)
        return json.dumps({**policy, "Statement": [_for_moto(s) for s in policy["Statement"]]})


@pytest.fixture
def deployment(local_aws, landing):
    """The buckets, queue, commit table and KMS keys of one deployment, and a client maker
    for each role (an IAM user holding the role's policy)."""
    suffix = uuid.uuid4().hex[:8]
    s3, iam = aws.client("s3"), aws.client("iam")
    pii_bucket, ops_bucket, warehouse_bucket = (f"{kind}-{suffix}" for kind in ("pii", "ops", "warehouse"))
    for bucket in (pii_bucket, ops_bucket, warehouse_bucket):
        aws.ensure_bucket(s3, bucket)
    commit_table = f"delta-commits-{suffix}"
    aws.client("dynamodb").create_table(
        TableName=commit_table,
        AttributeDefinitions=[
            {"AttributeName": "tablePath", "AttributeType": "S"},
            {"AttributeName": "fileName", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "tablePath", "KeyType": "HASH"},
            {"AttributeName": "fileName", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    settings = Settings.from_env()
    names = Names(
        {
            "landing-bucket": landing.bucket,
            "landing-queue": landing.queue_url.rsplit("/", 1)[1],
            "pii-bucket": pii_bucket,
            "ops-bucket": ops_bucket,
            "warehouse-bucket": warehouse_bucket,
            "warehouse-prefix": "lake",
            "delta-commit-table": commit_table,
            "region": aws.region(),
            "account-id": aws.client("sts").get_caller_identity()["Account"],
            "pii-kms-key-arn": kms_arn(settings.pii_kms_key),
            "pii-mac-key-arn": kms_arn(settings.pii_mac_key),
            "kinesis-stream": f"events-{suffix}",
        }
    )
    aws.provision_stream(aws.client("kinesis"), names["kinesis-stream"], shards=1)
    # A producer's record, for the pipeline role's Kinesis sensor to read.
    aws.client("kinesis").put_record(
        StreamName=names["kinesis-stream"], Data=b'{"eventName": "x"}', PartitionKey="p"
    )
    credentials = {}
    for role, policy_file in (
        ("ingest", "ingest-service-policy.json"),
        ("pipeline", "pipeline-policy.json"),
        ("erasure", "erasure-policy.json"),
    ):
        user = f"gaming-pipeline-{role}-{suffix}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=role, PolicyDocument=names.render(policy_file))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        credentials[role] = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }

    def client(role: str, service: str):
        return boto3.client(service, region_name=aws.region(), **credentials[role])

    def vault(role: str) -> PiiVault:
        keys = KmsKeys(client(role, "kms"), settings.pii_kms_key, settings.pii_mac_key)
        return PiiVault(client(role, "s3"), pii_bucket, keys)

    with enable_iam_authentication():
        yield names, client, vault, credentials


# deploy/helm/values.yaml's computeLogManager: every run pod writes its step logs there.
COMPUTE_LOGS = "dagster/compute-logs"


def compute_logs(role_credentials: dict, names: Names, local_dir: Path) -> S3ComputeLogManager:
    """Dagster's S3 compute log manager as values.yaml configures it, in a pod of the role."""
    with pytest.MonkeyPatch.context() as environment:
        # A default session of its own, made from the role's credentials.
        environment.setattr(boto3, "DEFAULT_SESSION", None)
        environment.setenv("AWS_ACCESS_KEY_ID", role_credentials["aws_access_key_id"])
        environment.setenv("AWS_SECRET_ACCESS_KEY", role_credentials["aws_secret_access_key"])
        return S3ComputeLogManager(
            bucket=names["ops-bucket"],
            prefix=COMPUTE_LOGS,
            endpoint_url=aws.endpoint("S3"),
            local_dir=str(local_dir),
        )


def capture_step_log(
    role_credentials: dict, names: Names, local_dir: Path, log_key: list[str], output: str
) -> tuple[S3ComputeLogManager, str]:
    """One step's output captured by the role's compute log manager, uploaded as the capture
    ends; the manager, and the prefix its objects land under."""
    logs = compute_logs(role_credentials, names, local_dir)
    with logs.capture_logs(log_key):
        print(output, flush=True)
    run_id, _, _ = log_key
    return logs, f"{COMPUTE_LOGS}/storage/{run_id}/compute_logs/"


def listed(s3, bucket: str, prefix: str) -> set[str]:
    return {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}


def kms_arn(alias: str) -> str:
    return aws.client("kms").describe_key(KeyId=alias)["KeyMetadata"]["Arn"]


def denied(call) -> bool:
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException", "403")
    return False


def _record(vault: PiiVault, device: str, event_id: str) -> Record:
    player = vault.player_id(device)
    line = json.dumps(
        {"event_id": event_id, "eventName": "gameStart", "eventTime": 1, "eventParams": {"device_id": device}}
    )
    return Record(
        1_795_420_800_000,
        line.encode() + b"\n",
        b"",
        [(player, event_id, vault.seal_pending(player, {"email": "x@y.z"}))],
        [],
    )


def test_the_ingest_role_delivers_and_seals_pii_but_cannot_read_it_back(deployment):
    names, client, vault_of, _ = deployment
    vault = vault_of("ingest")
    delivery = Delivery(client("ingest", "s3"), names["landing-bucket"], vault, "spool-1")
    # A new player's first PII (the vault's bucket looked up, their key made), then more.
    assert delivery("segment-1", [_record(vault, DEVICE, "e-1")]).players == 1
    assert delivery("segment-2", [_record(vault, DEVICE, "e-2")]).players == 1
    landed = client("pipeline", "s3").list_objects_v2(Bucket=names["landing-bucket"])["Contents"]
    assert len(landed) == 2
    segments = ingest_segments((names["landing-bucket"], obj["Key"]) for obj in landed)
    assert [r["event_id"] for r in vault_of("erasure").read(DEVICE, segments)] == ["e-1", "e-2"]
    # It cannot open what it sealed: no record is readable to it, no data key decrypts for it.
    assert denied(lambda: vault.read(DEVICE, segments))
    key_object = json.loads(
        client("ingest", "s3")
        .get_object(Bucket=names["pii-bucket"], Key=f"pii/keys/{vault.player_id(DEVICE)}")["Body"]
        .read()
    )
    assert denied(lambda: vault.keys.open_data_key(base64.b64decode(key_object["data_key"])))
    records = "pii/segments/ingest-spool-1-segment-1"
    assert denied(lambda: client("ingest", "s3").get_object(Bucket=names["pii-bucket"], Key=records))


def test_the_ingest_role_puts_events_on_its_stream_but_cannot_read_it(deployment, tmp_path):
    names, client, vault_of, _ = deployment
    vault, stream = vault_of("ingest"), names["kinesis-stream"]
    sink = StreamSink(client("ingest", "kinesis"), stream, lambda segment: Progress(tmp_path / segment))
    delivery = Delivery(client("ingest", "s3"), names["landing-bucket"], vault, "0a1b2c3d", sink)
    assert delivery("00000000000000042", [_record(vault, DEVICE, "e-1")]).stream_records == 1
    assert denied(
        lambda: client("ingest", "kinesis").get_shard_iterator(
            StreamName=stream, ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
        )
    )
    # Read by the pipeline role, the record leads the erasure role to the player's PII.
    source = KinesisSource(
        client("pipeline", "kinesis"), client("pipeline", "s3"), stream, names["landing-bucket"]
    )
    read = source.deliver(Positions(), time.time() + 20)
    objects = [(obj.bucket, obj.key) for obj in read.objects]
    segments = erasure.pii_segments(client("erasure", "s3"), objects)
    assert segments == ["ingest-0a1b2c3d-00000000000000042"]
    assert [r["event_id"] for r in vault_of("erasure").read(DEVICE, segments)] == ["e-1"]


def test_the_pipeline_role_takes_notifications_and_logs_but_cannot_write_landing_objects(
    deployment, landing, tmp_path
):
    names, client, vault_of, credentials = deployment
    client("ingest", "s3").put_object(Bucket=names["landing-bucket"], Key="events/1.ndjson", Body=b"{}\n")
    s3, sqs = client("pipeline", "s3"), client("pipeline", "sqs")
    assert s3.get_object(Bucket=names["landing-bucket"], Key="events/1.ndjson")["Body"].read() == b"{}\n"
    # The queue sensor's calls.
    for message in sqs.receive_message(QueueUrl=landing.queue_url, WaitTimeSeconds=1).get("Messages", []):
        sqs.change_message_visibility(
            QueueUrl=landing.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
        sqs.delete_message(QueueUrl=landing.queue_url, ReceiptHandle=message["ReceiptHandle"])
    sqs.get_queue_attributes(QueueUrl=landing.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    # Ingestion's erased-players list (pseudonyms by the MAC key).
    assert not vault_of("pipeline").erased().player_ids
    # Several drivers' commits: the DynamoDB log store's claim and lookup.
    dynamodb = client("pipeline", "dynamodb")
    dynamodb.describe_table(TableName=names["delta-commit-table"])
    item = {"tablePath": {"S": "s3a://w/lake/t"}, "fileName": {"S": "00000000000000000000.json"}}
    dynamodb.put_item(
        TableName=names["delta-commit-table"], Item=item, ConditionExpression="attribute_not_exists(fileName)"
    )
    dynamodb.query(
        TableName=names["delta-commit-table"],
        KeyConditionExpression="tablePath = :path",
        ExpressionAttributeValues={":path": item["tablePath"]},
    )
    # Step logs, as Dagster's S3 compute log manager writes and reads them.
    log_key = ["run-1", "compute_logs", "step-1"]
    logs, prefix = capture_step_log(
        credentials["pipeline"], names, tmp_path / "compute-logs", log_key, "step output"
    )
    assert listed(s3, names["ops-bucket"], prefix) == {prefix + "step-1.out", prefix + "step-1.err"}
    assert b"step output" in logs.get_log_data(log_key).stdout
    logs.delete_logs(log_key=log_key)
    # The Kinesis sensor's calls: it reads the stream into objects under kinesis/.
    source = KinesisSource(
        client("pipeline", "kinesis"), s3, names["kinesis-stream"], names["landing-bucket"]
    )
    delivery = source.deliver(Positions(), time.time() + 20)
    assert delivery.records == 1 and delivery.objects[0].key.startswith("kinesis/")
    assert denied(
        lambda: client("pipeline", "kinesis").put_record(
            StreamName=names["kinesis-stream"], Data=b"{}", PartitionKey="p"
        )
    )
    # What it must not do: write the landing bucket, or read PII.
    assert denied(
        lambda: s3.put_object(Bucket=names["landing-bucket"], Key="events/forged.ndjson", Body=b"{}\n")
    )
    assert denied(
        lambda: s3.get_object(
            Bucket=names["pii-bucket"], Key=f"pii/keys/{vault_of('pipeline').player_id(DEVICE)}"
        )
    )


def test_the_erasure_role_erases_and_exports_but_cannot_take_notifications(deployment, landing):
    names, client, vault_of, _ = deployment
    ingest_vault = vault_of("ingest")
    Delivery(client("ingest", "s3"), names["landing-bucket"], ingest_vault, "spool-1")(
        "segment-1", [_record(ingest_vault, DEVICE, "e-1"), _record(ingest_vault, "d-iam-2", "e-2")]
    )
    vault = vault_of("erasure")
    player = vault.player_id(DEVICE)
    # The job's own order: the list, the landing objects, the key.
    vault.mark_erased(player)
    s3 = client("erasure", "s3")
    objects = [
        (names["landing-bucket"], obj["Key"])
        for obj in s3.list_objects_v2(Bucket=names["landing-bucket"])["Contents"]
    ]
    segments = ingest_segments(objects)
    vault.note_segments(player, segments)
    (landed,) = erasure.erase_from_objects(s3, objects, DEVICE)
    assert (landed.lines_removed, landed.objects_rewritten) == (1, 1)
    assert [r["event_id"] for r in vault.read("d-iam-2", segments)] == ["e-2"]  # export decrypts
    shredded = vault.shred(player)
    assert (shredded.key_shredded, shredded.records_deleted, shredded.segments_rewritten) == (True, 1, 1)
    with pytest.raises(PlayerErased):
        vault.read(DEVICE, segments)
    assert vault_of("ingest").erased().holds(DEVICE)
    assert denied(lambda: client("erasure", "sqs").receive_message(QueueUrl=landing.queue_url))


def test_the_erasure_role_keeps_its_step_logs_but_cannot_read_or_remove_any(deployment, tmp_path):
    """An erase_player_job pod uploads its step logs as every run pod does (values.yaml's
    compute log manager): refused, Dagster would only note it and the erasure would succeed
    with no logs. The UI reads them under the pipeline role; the erasure role may only write."""
    names, client, _, credentials = deployment
    ops, s3 = names["ops-bucket"], client("erasure", "s3")
    # A pipeline run's logs, there before.
    capture_step_log(
        credentials["pipeline"],
        names,
        tmp_path / "pipeline",
        ["run-1", "compute_logs", "step-1"],
        "a pipeline run's step output",
    )
    # The erasure run's: the upload at the end of the capture is the run pod's only call.
    log_key = ["erasure-run", "compute_logs", "erase_player"]
    _, prefix = capture_step_log(
        credentials["erasure"], names, tmp_path / "erasure", log_key, "player erased"
    )
    assert listed(client("pipeline", "s3"), ops, prefix) == {
        prefix + "erase_player.out",
        prefix + "erase_player.err",
    }
    # The webserver (pipeline role) shows them once the pod is gone.
    shown = compute_logs(credentials["pipeline"], names, tmp_path / "webserver").get_log_data(log_key)
    assert b"player erased" in shown.stdout
    # Nothing else in the ops bucket, not even beside the prefix.
    for key in ("dagster/forged.txt", f"{COMPUTE_LOGS}-forged/x.out", "other/x.out"):
        assert denied(lambda key=key: s3.put_object(Bucket=ops, Key=key, Body=b"x")), key
    # No reading of logs (another run's or its own), no listing, and no removing its own.
    other = f"{COMPUTE_LOGS}/storage/run-1/compute_logs/step-1.out"
    assert denied(lambda: s3.get_object(Bucket=ops, Key=other))
    assert denied(lambda: s3.get_object(Bucket=ops, Key=prefix + "erase_player.out"))
    assert denied(lambda: s3.list_objects_v2(Bucket=ops, Prefix=f"{COMPUTE_LOGS}/"))
    assert denied(lambda: s3.delete_object(Bucket=ops, Key=prefix + "erase_player.out"))
