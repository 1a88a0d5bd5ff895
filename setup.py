from setuptools import find_packages, setup

# Versions are pinned together: dagster-aws 0.29.27 pins dagster 1.13.27,
# and delta-spark 4.4.0 accepts pyspark up to 4.2.0. Its jar, delta-spark_4.2_2.13, is on
# Maven Central at 4.4.0 but not 4.4.1, and the Python API must match the jar.
setup(
    name="gaming_pipeline",
    version="0.1.0",
    description="Dagster-orchestrated Delta Lake pipeline for mobile-game analytics",
    packages=find_packages(exclude=["gaming_pipeline_tests*"]),
    # The Delta log store's Java source (`gaming-pipeline fetch-jars` compiles it) and the
    # local Dagster instance of the demo and the tests.
    package_data={"gaming_pipeline": ["games.toml", "jvm/*.java", "jvm/fairscheduler.xml", "local/dagster.yaml"]},
    python_requires=">=3.11,<3.12",
    install_requires=[
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-aws==0.29.27",
        # SQLAlchemy 2.1 makes psycopg 3 the default Postgres driver; dagster-postgres 0.29
        # is built on psycopg2 and fails to connect with it.
        "sqlalchemy==2.0.58",
        # [connect]: runs attach to a long-lived Spark Connect server (gaming-pipeline
        # spark-server); its client needs pandas, grpc and zstandard, pinned here.
        "pyspark[connect]==4.2.0",
        "pandas==2.3.3",
        "grpcio-status==1.85.1",
        "googleapis-common-protos==1.76.0",
        "zstandard==0.25.0",
        "delta-spark==4.4.0",
        "boto3>=1.40,<2",
        "moto[server]==5.2.5",
        "rich>=13,<16",
        "deltalake[pyarrow]==1.6.6",
        "matplotlib==3.11.2",
        "cryptography==50.0.2",
        "msgspec==0.22.0",
        "prometheus-client==0.26.0",
        # The ingest service: its connection limits extend uvicorn's httptools protocol class,
        # so the three move together.
        "starlette==1.10.0",
        "uvicorn==0.54.0",
        "httptools==0.9.0",
        # De-aggregates records the Kinesis Producer Library packed (lib/kinesis.py).
        "aws-kinesis-agg==1.2.3",
    ],
    extras_require={
        # dagster-postgres: a test runs the daemon on the production (Postgres) instance config.
        # pytest-xdist: `make test` runs the suite on two workers.
        "test": ["pytest>=9,<10", "pytest-xdist==3.8.0", "ruff==0.17.6", "dagster-postgres==0.29.27"],
        # make bench: the single-machine peer (Polars + deltalake) and peak-memory sampling.
        "bench": ["polars==2.1.0", "psutil==7.2.2"],
        # deploy/Dockerfile: run pods use the Postgres instance and the Kubernetes run launcher.
        "deploy": ["dagster-postgres==0.29.27", "dagster-k8s==0.29.27"],
    },
    entry_points={"console_scripts": ["gaming-pipeline=gaming_pipeline.cli:main"]},
)
