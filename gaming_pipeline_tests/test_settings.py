from pathlib import Path

import pytest

from gaming_pipeline.lib.jars import LOG_STORE_JAR, JarsMissing
from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import s3a_config, spark_config


def test_defaults_live_under_home():
    settings = Settings.from_env({"GAMING_PIPELINE_HOME": "/srv/gp"})
    assert settings.home == Path("/srv/gp")
    assert settings.warehouse == "/srv/gp/warehouse"
    assert settings.landing_bucket == "gaming-pipeline-landing"
    assert settings.queue_url == ""
    assert settings.spark_master == "local[*]"
    assert settings.batch_interval_seconds == 300
    assert settings.outage_seconds == 900


def test_every_setting_comes_from_its_variable():
    settings = Settings.from_env(
        {
            "GAMING_PIPELINE_HOME": "/h",
            "GAMING_PIPELINE_WAREHOUSE": "s3a://lake/prod",
            "GAMING_PIPELINE_LANDING_BUCKET": "b",
            "GAMING_PIPELINE_QUEUE_URL": "https://sqs/q",
            "GAMING_PIPELINE_SPARK_MASTER": "spark://m:7077",
            "GAMING_PIPELINE_DELTA_COMMIT_TABLE": "delta_commits",
            "GAMING_PIPELINE_BATCH_INTERVAL_SECONDS": "7.5",
        }
    )
    assert (
        settings.warehouse,
        settings.landing_bucket,
        settings.queue_url,
        settings.spark_master,
        settings.delta_commit_table,
        settings.batch_interval_seconds,
    ) == ("s3a://lake/prod", "b", "https://sqs/q", "spark://m:7077", "delta_commits", 7.5)


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
@pytest.mark.parametrize(
    "variable", ["GAMING_PIPELINE_BATCH_INTERVAL_SECONDS", "GAMING_PIPELINE_OUTAGE_SECONDS"]
)
def test_a_duration_that_is_no_number_of_seconds_is_refused_by_name(value, variable):
    with pytest.raises(ValueError, match=f"{variable} .* not '{value}'"):
        Settings.from_env({variable: value})


def test_s3a_follows_boto3_endpoint_or_stays_on_aws():
    local = s3a_config({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_REGION": "eu-west-1"})
    assert local["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5000"
    assert local["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert local["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert local["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert s3a_config({}) == {"spark.hadoop.fs.s3a.endpoint.region": "us-east-1"}


def test_a_local_driver_listens_on_loopback_only(monkeypatch):
    monkeypatch.setattr("gaming_pipeline.lib.spark.runtime_jars", lambda: ["/jars/delta.jar"])
    local = spark_config(Settings.from_env({"GAMING_PIPELINE_HOME": "/h"}), environ={})
    assert local["spark.driver.bindAddress"] == local["spark.driver.host"] == "127.0.0.1"
    assert local["spark.jars"] == "/jars/delta.jar"
    cluster = spark_config(
        Settings.from_env({"GAMING_PIPELINE_HOME": "/h", "GAMING_PIPELINE_SPARK_MASTER": "spark://m:7077"}),
        environ={},
    )
    assert "spark.driver.bindAddress" not in cluster


def test_a_commit_table_puts_s3a_commits_through_dynamodb(monkeypatch):
    monkeypatch.setattr("gaming_pipeline.lib.spark.runtime_jars", lambda: [f"/jars/{LOG_STORE_JAR}"])
    settings = Settings.from_env({"GAMING_PIPELINE_DELTA_COMMIT_TABLE": "delta_commits"})
    conf = spark_config(
        settings,
        environ={
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "AWS_ENDPOINT_URL_DYNAMODB": "http://127.0.0.1:8000",
            "AWS_REGION": "eu-west-1",
        },
    )
    assert conf["spark.delta.logStore.s3a.impl"] == "gaming_pipeline.delta.DynamoDBLogStore"
    assert conf["spark.hadoop.gaming_pipeline.commits.table"] == "delta_commits"
    assert conf["spark.hadoop.gaming_pipeline.commits.region"] == "eu-west-1"
    # boto3's rule: a service's own endpoint variable wins over the global one.
    assert conf["spark.hadoop.gaming_pipeline.commits.endpoint"] == "http://127.0.0.1:8000"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:5000"

    on_aws = spark_config(settings, environ={})
    assert "spark.hadoop.gaming_pipeline.commits.endpoint" not in on_aws
    assert "spark.delta.logStore.s3a.impl" not in spark_config(Settings.from_env({}), environ={})


def test_a_commit_table_without_the_built_log_store_says_how_to_build_it(monkeypatch):
    monkeypatch.setattr("gaming_pipeline.lib.spark.runtime_jars", lambda: ["/jars/delta.jar"])
    settings = Settings.from_env({"GAMING_PIPELINE_DELTA_COMMIT_TABLE": "delta_commits"})
    with pytest.raises(JarsMissing, match="install a JDK 17"):
        spark_config(settings, environ={})
