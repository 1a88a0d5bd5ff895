"""The `gaming-pipeline` command (README: The command line)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gaming_pipeline.ingest_service import keys
from gaming_pipeline.ingest_service.client import EventSender, send_in_batches
from gaming_pipeline.lib import aws, jars
from gaming_pipeline.lib.settings import DEFAULT_KINESIS_STREAM, DEFAULT_QUEUE_NAME, Settings
from gaming_pipeline.local import generator, ports
from gaming_pipeline.local.endpoint import LocalAws

console = Console(stderr=True)


def _number(unit: str, above_zero: bool = False, zero_means: str = ""):
    """An argparse type: a finite number of `unit`, 0 or more (above 0 with `above_zero`);
    anything else is refused with a message saying what it takes (argparse exits with 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if math.isfinite(value) and (value > 0 if above_zero else value >= 0):
            return value
        wanted = "a number above 0" if above_zero else "0 or more"
        raise argparse.ArgumentTypeError(
            f"{text} {unit}: give {wanted}" + (f" (0: {zero_means})" if zero_means else "")
        )

    return parse


def _running_spark(settings: Settings) -> str:
    """The Spark Connect address of a demo running on this home, if it still serves."""
    from gaming_pipeline.local.processes import serving

    try:
        address = settings.spark_connect_file.read_text().strip()
    except FileNotFoundError:
        return ""
    return address if serving(address) else ""


def _spark(settings: Settings):
    from gaming_pipeline.lib.spark import is_connect_address, start_session

    # A running demo's warm Spark answers in seconds; a JVM of the CLI's own takes a minute.
    if not os.environ.get("GAMING_PIPELINE_SPARK_MASTER") and (running := _running_spark(settings)):
        console.print(f"attached to the running Spark at {running}")
        settings = dataclasses.replace(settings, spark_master=running)
    with console.status("starting Spark"):
        spark = start_session(settings)
    if not is_connect_address(settings.spark_master):
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def cmd_spark_server(args: argparse.Namespace) -> int:
    """The Spark Connect server in the foreground (it replaces this process)."""
    from gaming_pipeline.lib.spark import connect_server_command

    command = connect_server_command(Settings.from_env(), args.host, args.port, args.master)
    console.print(f"Spark Connect server on sc://{args.host}:{args.port} (driver {args.master})")
    sys.stdout.flush()
    os.execv(command[0], command)


def cmd_fetch_jars(args: argparse.Namespace) -> int:
    cached = jars.fetch(progress=console.print)
    console.print(
        f"{len(cached)} jars for Delta, s3a and the DynamoDB log store cached in {jars.cache_dir()}"
    )
    return 0


def cmd_local_aws(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    local = LocalAws(port=ports.free_port(prefer=args.port)).start()
    os.environ.update(local.environment())
    path = aws.provision(settings.landing_bucket, args.queue_name)
    if settings.kinesis_stream:
        arn = aws.provision_stream(aws.client("kinesis"), settings.kinesis_stream)
        console.print(f"Kinesis stream {arn}")
    console.print(f"local S3/SNS/SQS/KMS/Kinesis endpoint on {local.endpoint} (Ctrl-C stops it)")
    for key, value in {**local.environment(), "GAMING_PIPELINE_QUEUE_URL": path.queue_url}.items():
        print(f"export {key}={value}")
    sys.stdout.flush()
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        local.stop()
    return 0


def _s3_put(bucket: str):
    s3 = aws.client("s3")
    return lambda key, body: s3.put_object(Bucket=bucket, Key=key, Body=body)


def _dir_put(root: Path):
    def put(key: str, body: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    return put


def _post(events, sender: EventSender, totals: generator.Totals, on_events) -> None:
    """Send events to the ingest service as a client would (no eventTime, PII on session
    starts); a batch is sent until the service takes it."""

    def counted(stream):
        for event in stream:
            totals.add(event)
            yield generator.client_event(event)

    def sent(batch: list[dict], answer: dict) -> None:
        totals.objects += 1
        on_events(len(batch))

    send_in_batches(counted(events), sender, on_batch=sent)


def cmd_generate(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    totals = generator.Totals()
    if args.rate:
        events = generator.stream(args.seed, args.rate, args.duration)
        total = int(args.rate * args.duration) if args.duration else None
        flush_seconds = args.flush_seconds
    elif args.to == "http":
        # The service stamps eventTime at receipt: over HTTP, events are sent as they are made.
        factory = generator.EventFactory(args.seed)
        events = (factory.event(time.time()) for _ in range(args.events))
        total, flush_seconds = args.events, None
    else:
        end = datetime.fromisoformat(args.end) if args.end else None
        start, end = generator.history_window(args.days, end)
        events = generator.history(args.seed, args.events, start, end)
        total, flush_seconds = args.events, None
    with Progress(
        TextColumn("events"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task("events", total=total)
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        try:
            if args.to == "http":
                sender = EventSender(args.url, args.api_key or os.environ.get("GAMING_PIPELINE_API_KEY", ""))
                _post(events, sender, totals, advance)
            else:
                put = (
                    _dir_put(Path(args.out))
                    if args.to == "dir"
                    else _s3_put(args.bucket or settings.landing_bucket)
                )
                objects = generator.landing_objects(events, args.seed, args.object_events, flush_seconds)
                generator.write_objects(objects, put, totals, on_object=advance)
        except KeyboardInterrupt:
            pass
    where = "request(s) to the ingest service" if args.to == "http" else "landing object(s)"
    console.print(f"{totals.events} events in {totals.objects} {where}")
    if args.totals:
        print(json.dumps(totals.as_dict(), indent=2))
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    """Check a games registry's event catalog: each fault on a line of its own, or the
    catalog as the pipeline will read it."""
    from gaming_pipeline.catalog import CatalogError
    from gaming_pipeline.games import load_registry

    try:
        registry = load_registry(args.file, named=args.file)
    except ValueError as error:
        faults = (
            error.__cause__.faults if isinstance(error.__cause__, CatalogError) else [str(error.__cause__)]
        )
        for fault in faults:
            print(f"{args.file}: {fault}", file=sys.stderr)
        return 1
    table = Table(
        "game", "event", "parameters (* required)", "open", title=f"{args.file}: the catalog is valid"
    )
    for game in registry.games:
        for spec in game.events.values():
            if spec.checked:
                params = ", ".join(f"{p.name}{'*' if p.required else ''}: {p.type}" for p in spec.params)
                table.add_row(game.keyword, spec.name, params, "yes" if spec.open else "")
    Console().print(table)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from gaming_pipeline.lib.tables import register_views, tables_named_in

    settings = Settings.from_env()
    spark = _spark(settings)
    query = args.query.strip().rstrip(";")
    # Only the tables the query names, or all of them for one naming none (SHOW TABLES).
    register_views(spark, settings.warehouse, tables_named_in(query) or None)
    result = spark.sql(query)
    rows = result.limit(args.limit).collect()
    if args.json:
        for row in rows:
            print(json.dumps(row.asDict(recursive=True), default=str))
        return 0
    table = Table(*result.columns)
    for row in rows:
        table.add_row(*("NULL" if value is None else str(value) for value in row))
    Console().print(table)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from gaming_pipeline.lib.tables import describe_tables

    settings = Settings.from_env()
    rows = describe_tables(_spark(settings), settings.warehouse)
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table("table", "location", "version", "rows")
    for row in rows:
        table.add_row(row["table"], row["location"], str(row["version"]), f"{row['rows']:,}")
    Console().print(table)
    return 0


def cmd_ingest_server(args: argparse.Namespace) -> int:
    from gaming_pipeline.ingest_service.app import ServiceConfig, serve
    from gaming_pipeline.ingest_service.spool import SpoolBusy
    from gaming_pipeline.lib.pii import keys_from

    settings = Settings.from_env()
    if args.sink == "kinesis" and not settings.kinesis_stream:
        console.print(
            "[red]--sink kinesis puts events on the stream GAMING_PIPELINE_KINESIS_STREAM names: set it "
            "(a stream name or ARN)[/red]"
        )
        return 2
    config = ServiceConfig(
        spool_dir=settings.spool_dir,
        keys_file=settings.api_keys_file,
        stream=settings.kinesis_stream if args.sink == "kinesis" else "",
        landing_bucket=settings.landing_bucket,
        pii_bucket=settings.pii_bucket,
        pii_keys=keys_from(settings),
        flush_bytes=args.flush_bytes,
        flush_seconds=args.flush_seconds,
        spool_max_bytes=args.spool_max_bytes,
        max_body_bytes=args.max_body_bytes,
        dedup_seconds=args.dedup_seconds,
        max_events_per_request=args.max_events_per_request,
        max_header_bytes=args.max_header_bytes,
        header_timeout_seconds=args.header_timeout,
        body_timeout_seconds=args.body_timeout,
        keep_alive_seconds=args.keep_alive,
        max_connections=args.max_connections,
    )
    if not keys.listed(config.keys_file):
        console.print(
            f"no API keys in {config.keys_file} yet: `gaming-pipeline api-keys create <app>` makes one"
        )
    try:
        serve(config, args.host, args.port, args.log_level)
    except SpoolBusy as error:
        console.print(f"[red]{error}[/red]")
        return 1
    return 0


def _vault(settings: Settings):
    from gaming_pipeline.lib.pii import PiiVault, keys_from

    return PiiVault(aws.client("s3"), settings.pii_bucket, keys_from(settings))


def cmd_pii(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    vault = _vault(settings)
    if args.action == "player-id":
        # What erase_player_job takes: the device id itself never goes into run config.
        print(vault.player_id(args.device_id))
        return 0
    from gaming_pipeline.defs.maintenance.recovery import PLAYER_TABLES, untaken_objects
    from gaming_pipeline.defs.resources import LandingBucketResource
    from gaming_pipeline.lib.erasure import export_player
    from gaming_pipeline.lib.warehouse import is_delta_table, table_path

    spark = _spark(settings)
    tables = {
        table: table_path(settings.warehouse, table)
        for table in PLAYER_TABLES
        if is_delta_table(spark, table_path(settings.warehouse, table))
    }
    untaken = untaken_objects(LandingBucketResource(bucket=settings.landing_bucket), settings.warehouse)
    print(json.dumps(export_player(spark, tables, vault, args.device_id, untaken), indent=2, default=str))
    return 0


def cmd_api_keys(args: argparse.Namespace) -> int:
    path = Settings.from_env().api_keys_file
    if args.action == "create":
        key_id, key = keys.create(path, args.app)
        console.print(f"API key {key_id} for {args.app} (shown once; the service stores its hash only):")
        print(key)
    elif args.action == "revoke":
        gone = keys.revoke(path, args.key_id)
        console.print(f"revoked {gone['id']} of {gone['app']}: refused from the service's next second")
    else:
        print(json.dumps(keys.listed(path), indent=2))
    return 0


# What ends a program run from a terminal: Ctrl-C, the terminal closed, `kill`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)


def _interrupt(signum, frame):
    """Any stop signal as a Ctrl-C: the same orderly stop."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _on_stop_signals(handler) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def _tell(message: str) -> None:
    """A line for the terminal, which may be gone while stopping: closed (SIGHUP), or the
    reader of a pipe ended by the same Ctrl-C (`make demo | tee`), on which rich exits."""
    try:
        console.print(message)
    except (OSError, SystemExit):
        pass


def _command() -> str:
    """This command as a new shell finds it: the console script that runs now, or the one
    beside this Python (a virtualenv's, which is on no PATH outside it), else the one on PATH."""
    for candidate in (Path(sys.argv[0]), Path(sys.executable).parent / "gaming-pipeline"):
        if candidate.name == "gaming-pipeline" and candidate.is_file():
            return str(candidate.absolute())
    return shutil.which("gaming-pipeline") or "gaming-pipeline"


def _query_line(settings: Settings, query: str) -> str:
    """A `gaming-pipeline sql` line that works as typed in a new shell, in any folder: the
    home and warehouse named where they are not the defaults."""
    default_home = Settings.from_env({}).home
    where = {
        "GAMING_PIPELINE_HOME": str(settings.home) if settings.home != default_home else "",
        "GAMING_PIPELINE_WAREHOUSE": os.environ.get("GAMING_PIPELINE_WAREHOUSE", ""),
    }
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in where.items() if value)
    return f"{prefix}{shlex.quote(_command())} sql {shlex.quote(query)}"


def _land_history(plan: generator.HistoryPlan, bucket: str) -> generator.Totals:
    """The plan's events as landing objects straight into the bucket, as a bulk load does:
    the sensors take them like any other object."""
    totals = generator.Totals()
    with Progress(
        TextColumn("landing the history"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as progress:
        task = progress.add_task("history", total=plan.events)
        generator.write_objects(
            plan.objects(),
            _s3_put(bucket),
            totals,
            on_object=lambda n: progress.advance(task, n),
        )
    return totals


def _history(args: argparse.Namespace, settings: Settings) -> str:
    """Land the demo's history unless the warehouse already holds events (an earlier demo's
    on the same home: a second month would add to the first); what was done, for the terminal."""
    from gaming_pipeline.lib.ledger import ingested_objects
    from gaming_pipeline.lib.tables import LEDGER_TABLE
    from gaming_pipeline.lib.warehouse import table_path

    plan = generator.demo_history(args.history_days, args.seed)
    if plan is None:
        return "none (--history-days 0)"
    if held := len(ingested_objects(table_path(settings.warehouse, LEDGER_TABLE))):
        return f"none landed: the warehouse holds {held:,} ingested objects already (an earlier demo's)"
    totals = _land_history(plan, settings.landing_bucket)
    return (
        f"{totals.events:,} events over {args.history_days:g} days to {plan.end:%Y-%m-%d %H:%M} UTC, "
        f"landed as {totals.objects:,} objects; ingested and charted within minutes"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on 127.0.0.1: local AWS, Dagster webserver and daemon, the ingest service,
    a month of history landed in the bucket, and a stream of events posted to the service."""
    from gaming_pipeline.defs.dashboard.assets import DASHBOARD_FILE
    from gaming_pipeline.lib.warehouse import table_path
    from gaming_pipeline.local import processes

    # A demo killed outright (kill -9, a crash) could not stop its processes: they would hold
    # its ports and home and keep launching runs.
    if left := processes.stop_orphans():
        console.print(f"stopped {len(left)} processes a previous demo left running")
    jars.fetch(progress=console.print)
    settings = Settings.from_env()
    dagster_home = processes.prepare_dagster_home(settings.home / "dagster")

    local = LocalAws(port=ports.free_port(prefer=args.aws_port)).start()
    os.environ.update(local.environment())
    path = aws.provision(settings.landing_bucket, DEFAULT_QUEUE_NAME)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "GAMING_PIPELINE_HOME": str(settings.home),
        "GAMING_PIPELINE_QUEUE_URL": path.queue_url,
    }
    stream = settings.kinesis_stream or (DEFAULT_KINESIS_STREAM if args.source == "kinesis" else "")
    if stream:
        aws.provision_stream(aws.client("kinesis"), stream)
        # The code location builds the stream's sensor from it.
        env["GAMING_PIPELINE_KINESIS_STREAM"] = stream
    if settings.pii_keys == "local":
        settings.resolved_pii_master_key()  # created once here, before the processes that share it
    started: list[subprocess.Popen] = []

    def stop_now(signum, frame) -> None:
        processes.signal_groups(started, signal.SIGKILL)
        processes.stop_descendants(timeout=0)

    stop_streaming = threading.Event()
    # A key of the demo's own, revoked when it stops, as a studio would rotate a client's key.
    key_id, api_key = keys.create(settings.api_keys_file, "gaming-pipeline demo")
    _on_stop_signals(_interrupt)
    try:
        ui_port = ports.free_port(prefer=args.ui_port)
        ingest_port = ports.free_port(prefer=args.ingest_port)
        logs = settings.home / "logs"
        logs.mkdir(exist_ok=True)
        spark_server = None
        if not os.environ.get("GAMING_PIPELINE_SPARK_MASTER"):
            # One long-lived Spark for every run, instead of a JVM started and warmed per run.
            spark_server, env["GAMING_PIPELINE_SPARK_MASTER"] = processes.start_spark_server(
                env, logs / "spark-server.log", port=args.spark_port
            )
            started.append(spark_server)
        # While Spark starts, and before the sensors do: they find the whole history on the
        # queue at their first tick and take it in full batches.
        history = _history(args, settings)
        webserver = ["dagster-webserver", "-h", "127.0.0.1", "-p", str(ui_port)]
        webserver_process = processes.start_dagster(webserver, env, logs / "webserver.log")
        started.append(webserver_process)
        started.append(processes.start_dagster(["dagster-daemon", "run"], env, logs / "daemon.log"))
        ingest_server = [
            "gaming-pipeline",
            "ingest-server",
            "--port",
            str(ingest_port),
            "--flush-seconds",
            str(args.flush_seconds),
            "--sink",
            "kinesis" if args.source == "kinesis" else "s3",
        ]
        ingest_process = processes.start(ingest_server, env, logs / "ingest.log")
        started.append(ingest_process)
        ui, ingest = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{ingest_port}"
        with console.status("starting Spark, the ingest service, the Dagster webserver and daemon"):
            processes.wait_until_serving(f"{ingest}/healthz", 60, ingest_process, logs / "ingest.log")
            processes.wait_until_serving(f"{ui}/server_info", 180, webserver_process, logs / "webserver.log")
            if spark_server:
                processes.wait_until_serving(
                    env["GAMING_PIPELINE_SPARK_MASTER"], 180, spark_server, logs / "spark-server.log"
                )
                settings.spark_connect_file.write_text(env["GAMING_PIPELINE_SPARK_MASTER"])

        def post() -> None:
            events = generator.stream(args.seed, args.rate, None)
            sender = EventSender(ingest, api_key)
            _post(
                (event for event in events if not stop_streaming.is_set()),
                sender,
                generator.Totals(),
                lambda n: None,
            )

        if args.rate:
            threading.Thread(target=post, daemon=True).start()
            load = f"{args.rate:g} events/s posted to the ingest service" + (
                f", which puts them on Kinesis stream {stream}" if args.source == "kinesis" else ""
            )
        else:
            load = "none generated (--rate 0): post your own events to the ingest service"
        dashboard = table_path(settings.warehouse, DASHBOARD_FILE)
        if "://" not in dashboard:
            dashboard = Path(dashboard).absolute().as_uri()
        # soft_wrap: a line longer than the terminal is left for it to fold, not broken by a
        # newline, so that the query line copied from it runs as it is.
        console.print(
            f"\n[bold]gaming_pipeline demo is up[/bold]\n"
            f"  Dagster UI      {ui}  (assets, sensors, runs)\n"
            f"  dashboard       {dashboard}  (rewritten after each KPI refresh)\n"
            f"  ingest service  {ingest}/v1/events  x-api-key: {api_key}\n"
            f"                  {ingest}/metrics  {ingest}/healthz\n"
            f"  local AWS       {local.endpoint}  bucket {settings.landing_bucket}"
            + (f"  Kinesis stream {stream}" if stream else "")
            + "\n"
            f"  Spark           {env.get('GAMING_PIPELINE_SPARK_MASTER', settings.spark_master)}\n"
            f"  warehouse       {settings.warehouse}\n"
            f"  logs            {logs}\n"
            f"  history         {history}\n"
            f"  live events     {load}\n"
            f"  query from another shell:\n"
            f"    {_query_line(settings, 'select count(*) from mobile_events_delta_raw')}\n"
            f"Ctrl-C stops everything.",
            soft_wrap=True,
            highlight=False,
        )
        while all(process.poll() is None for process in started):
            time.sleep(1)
        console.print(f"[red]a process of the demo exited; see the logs in {logs}[/red]")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # Another signal while stopping (a second Ctrl-C, impatient) hurries the stop on
        # instead of abandoning it halfway.
        _on_stop_signals(stop_now)
        stop_streaming.set()
        settings.spark_connect_file.unlink(missing_ok=True)
        _tell("stopping ...")
        processes.stop(started)
        processes.stop_descendants()
        local.stop()
        keys.revoke(settings.api_keys_file, key_id)
        _tell("stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaming-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole platform locally with generated events")
    demo.add_argument(
        "--rate",
        type=_number("events per second", zero_means="no generated load"),
        default=50,
        help="events per second posted to the ingest service (default 50; 0: none, post your own)",
    )
    demo.add_argument(
        "--history-days",
        type=_number("days", zero_means="no history"),
        default=30,
        help="days of history landed in the bucket before the stream starts, "
        f"{generator.DEMO_HISTORY_EVENTS_PER_DAY:,} events a day (default 30; 0: none)",
    )
    demo.add_argument(
        "--source",
        choices=("http", "kinesis"),
        default="http",
        help="how the live events posted to the ingest service come in: as landing objects (http, the "
        "default), or put on a Kinesis stream as the seed's Lambda puts them (GAMING_PIPELINE_KINESIS_STREAM, "
        f"default {DEFAULT_KINESIS_STREAM}) and read by its sensor",
    )
    demo.add_argument("--flush-seconds", type=float, default=5, help="landing object age limit")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--ui-port", type=int, default=3000, help="taken if free, else any free port")
    demo.add_argument("--aws-port", type=int, default=4566, help="taken if free, else any free port")
    demo.add_argument("--ingest-port", type=int, default=8080, help="taken if free, else any free port")
    demo.add_argument(
        "--spark-port", type=int, default=15002, help="Spark Connect; taken if free, else any free port"
    )
    demo.set_defaults(func=cmd_demo)

    local = commands.add_parser(
        "local-aws",
        help="start and provision a local S3/SNS/SQS/KMS endpoint (and Kinesis stream, when "
        "GAMING_PIPELINE_KINESIS_STREAM names one)",
    )
    local.add_argument("--port", type=int, default=4566, help="taken if free, else any free port")
    local.add_argument("--queue-name", default=DEFAULT_QUEUE_NAME)
    local.set_defaults(func=cmd_local_aws)

    gen = commands.add_parser("generate", help="generate game events as landing objects")
    amount = gen.add_mutually_exclusive_group(required=True)
    amount.add_argument("--events", type=int, help="how many events (history mode)")
    amount.add_argument(
        "--rate",
        type=_number("events per second", above_zero=True),
        help="events per second, stamped as they are made",
    )
    gen.add_argument("--duration", type=float, help="seconds to stream at --rate (default: until Ctrl-C)")
    gen.add_argument("--days", type=float, default=1.0, help="history: spread over this many past days")
    gen.add_argument("--end", help="history: end of the span, ISO-8601 (default now)")
    gen.add_argument("--seed", type=int, default=7, help="same seed, same events")
    gen.add_argument(
        "--to",
        choices=("s3", "dir", "http"),
        default="s3",
        help="the landing bucket, a folder (--out), or the ingest service (--url, --api-key)",
    )
    gen.add_argument("--url", default="http://127.0.0.1:8080", help="with --to http: the ingest service")
    gen.add_argument("--api-key", help="with --to http (default GAMING_PIPELINE_API_KEY)")
    gen.add_argument("--bucket", help="landing bucket (default GAMING_PIPELINE_LANDING_BUCKET)")
    gen.add_argument("--out", help="with --to dir: folder to write objects into")
    gen.add_argument("--object-events", type=int, default=generator.OBJECT_EVENTS)
    gen.add_argument("--flush-seconds", type=float, default=60, help="streaming: object age limit")
    gen.add_argument("--totals", action="store_true", help="print totals of what was generated as JSON")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    server = commands.add_parser("ingest-server", help="serve POST /v1/events for game clients")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8080)
    server.add_argument("--flush-seconds", type=float, default=60, help="landing object age limit")
    server.add_argument("--flush-bytes", type=int, default=5 * 1024 * 1024, help="landing object size limit")
    server.add_argument(
        "--spool-max-bytes", type=int, default=1024**3, help="spool size at which requests get 503"
    )
    server.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="larger bodies get 413")
    server.add_argument("--dedup-seconds", type=float, default=600, help="window for repeated event_ids")
    server.add_argument("--max-events-per-request", type=int, default=10_000, help="more events get 413")
    server.add_argument(
        "--max-header-bytes", type=int, default=16 * 1024, help="larger request heads get 431"
    )
    server.add_argument(
        "--header-timeout", type=float, default=10, help="seconds for a request head, else 408"
    )
    server.add_argument("--body-timeout", type=float, default=60, help="seconds for a request body, else 408")
    server.add_argument("--keep-alive", type=float, default=5, help="seconds an idle connection is kept open")
    server.add_argument(
        "--max-connections", type=int, default=1000, help="more get 503 (fewer if the open-file limit is low)"
    )
    server.add_argument(
        "--sink",
        choices=("s3", "kinesis"),
        default="s3",
        help="where accepted events go: landing objects in the bucket (default), or records on the "
        "Kinesis stream GAMING_PIPELINE_KINESIS_STREAM names",
    )
    server.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    server.set_defaults(func=cmd_ingest_server)

    api_keys = commands.add_parser("api-keys", help="create, revoke or list the ingest service's API keys")
    api_actions = api_keys.add_subparsers(dest="action", required=True)
    api_actions.add_parser("create", help="a new key for an app (printed once)").add_argument("app")
    api_actions.add_parser("revoke", help="revoke a key by its id").add_argument("key_id")
    api_actions.add_parser("list", help="ids, apps and creation times")
    api_keys.set_defaults(func=cmd_api_keys)

    pii = commands.add_parser("pii", help="a player's pseudonymous id, or everything held of them")
    pii_actions = pii.add_subparsers(dest="action", required=True)
    pii_actions.add_parser(
        "player-id", help="the pseudonymous id erase_player_job takes (never the device id)"
    ).add_argument("device_id")
    pii_actions.add_parser(
        "export", help="every record held of a player, PII decrypted, as JSON (GDPR right of access)"
    ).add_argument("device_id")
    pii.set_defaults(func=cmd_pii)

    catalog = commands.add_parser("catalog", help="check a games registry's event catalog")
    catalog_actions = catalog.add_subparsers(dest="action", required=True)
    catalog_actions.add_parser(
        "check", help="check a games TOML file: every fault with its line, game, event and parameter"
    ).add_argument("file")
    catalog.set_defaults(func=cmd_catalog)

    sql = commands.add_parser("sql", help="run a SQL query over the tables by name")
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, default=1000)
    sql.add_argument("--json", action="store_true", help="one JSON object per row")
    sql.set_defaults(func=cmd_sql)

    tables = commands.add_parser("tables", help="list tables: location, Delta version, rows")
    tables.add_argument("--json", action="store_true")
    tables.set_defaults(func=cmd_tables)

    spark_server = commands.add_parser(
        "spark-server", help="serve a long-lived Spark (Spark Connect) that runs attach to"
    )
    spark_server.add_argument("--host", default="127.0.0.1")
    spark_server.add_argument("--port", type=int, default=15002)
    spark_server.add_argument("--master", default="local[*]", help="the server's own Spark master")
    spark_server.set_defaults(func=cmd_spark_server)

    fetch = commands.add_parser("fetch-jars", help="fetch the pinned Delta and s3a jars once")
    fetch.set_defaults(func=cmd_fetch_jars)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "to", None) == "dir" and not args.out:
        build_parser().error("--to dir needs --out")
    if getattr(args, "to", None) == "http" and (args.end or args.days != 1.0):
        build_parser().error(
            "--to http sends events as they are made: the service stamps eventTime, so no --days/--end"
        )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
