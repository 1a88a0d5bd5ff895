from pathlib import Path

from gaming_pipeline.lib.settings import Settings
from gaming_pipeline.lib.spark import s3a_config, spark_config


def test_defaults_live_under_home():
    settings = Settings.from_env({"GAMING_PIPELINE_HOME": "/srv/gp"})
    assert settings.home == Path("/srv/gp")
    assert settings.warehouse == "/srv/gp/warehouse"
    assert settings.landing_bucket == "gaming-pipeline-landing"
    assert settings.queue_url == ""
    assert settings.spark_master == "local[*]"


def test_every_setting_comes_from_its_variable():
    settings = Settings.from_env(
        {
            "GAMING_PIPELINE_HOME": "/h",
            "GAMING_PIPELINE_WAREHOUSE": "s3a://lake/prod",
            "GAMING_PIPELINE_LANDING_BUCKET": "b",
            "GAMING_PIPELINE_QUEUE_URL": "https://sqs/q",
            "GAMING_PIPELINE_SPARK_MASTER": "spark://m:7077",
        }
    )
    assert (settings.warehouse, settings.landing_bucket, settings.queue_url, settings.spark_master) == (
        "s3a://lake/prod",
        "b",
        "https://sqs/q",
        "spark://m:7077",
    )


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
