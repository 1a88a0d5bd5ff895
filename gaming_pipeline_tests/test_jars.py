from gaming_pipeline.lib.jars import select_jars


def test_jars_spark_already_ships_are_left_out():
    resolved = [
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
        "org.apache.hadoop_hadoop-aws-3.5.0.jar",
        "org.apache.hadoop_hadoop-client-api-3.4.2.jar",
        "com.fasterxml.jackson.core_jackson-databind-2.13.5.jar",
        "com.github.luben_zstd-jni-1.5.7-3.jar",
        "software.amazon.awssdk_bundle-2.35.4.jar",
    ]
    shipped = [
        "hadoop-client-api-3.5.0.jar",
        "jackson-databind-2.21.2.jar",
        "zstd-jni-1.5.7-7.jar",
        "spark-core_2.13-4.2.0.jar",
    ]
    assert select_jars(resolved, shipped) == [
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
        "org.apache.hadoop_hadoop-aws-3.5.0.jar",
        "software.amazon.awssdk_bundle-2.35.4.jar",
    ]
