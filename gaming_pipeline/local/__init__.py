"""The local stack: what the demo, the tests and the benchmarks run on one machine (the AWS
endpoint, Dagster's processes, the event generator), apart from the pipeline itself."""
