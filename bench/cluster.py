"""Benchmark: the same N-month backfill on a cluster with 1 and with 2 single-threaded worker hosts.

    scripts/bench-cluster --months 4 --rows 76518

Starts the cluster of tests/integration/test_cluster.py on this machine (tests/support/cluster.py: PostgreSQL,
SeaweedFS, luigid with config/luigid-cluster.cfg and an MLflow server on PostgreSQL with its artifacts in the
bucket). Each run gets a fresh luigid, MLflow database and store prefix, H worker hosts (scripts/worker, `[taxi]
threads = 1`) and a host that only submits (scripts/backfill --workers 0). Prints the wall times and their ratio,
the per-month cost and the scheduler's overhead from luigid's task history, and what a 12-month x 2-color backfill
would take on 1, 4 and 12 hosts. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import speed
# the cluster harness of the tests: real services, one account per host
from tests.support.cluster import BUCKET, PIPELINE_TASKS, Cluster, worker_host, write_months

log = logging.getLogger(__name__)

GOAL_RATIO = 0.6  # 2 hosts take at most this share of 1 host's wall time (2 cores)
ESTIMATE_MONTHS = 24  # 12 months x 2 colors
ESTIMATE_HOSTS = (1, 4, 12)
FIRST_MONTH = (2022, 1)


def months(count: int) -> list[tuple[int, int]]:
    """`count` consecutive months from FIRST_MONTH."""
    year, month = FIRST_MONTH
    return [(year + (month - 1 + i) // 12, (month - 1 + i) % 12 + 1) for i in range(count)]


def run_backfill(cluster: Cluster, hosts: int, run: int, args: argparse.Namespace) -> dict:
    """One backfill of args.months months with `hosts` worker hosts; its wall time and task history."""
    mlflow, luigid = cluster.services(f"run{run}")
    prefix = f"run{run}"
    overrides = {"taxi": {"store": f"s3://{BUCKET}/{prefix}", "threads": "1"},
                 "worker": {"max_keep_alive_idle_duration": "24 hours"}}  # the submitter runs nothing: idle throughout
    if args.max_evals:
        overrides["TuneHyperparams"] = {"max_evals": str(args.max_evals)}
    config = cluster.profile(cluster.base / f"{prefix}.cfg", overrides, mlflow=mlflow, luigid=luigid)
    *workers, submitter = cluster.add_hosts(*[f"{prefix}-worker-{i}" for i in range(1, hosts + 1)],
                                            f"{prefix}-submitter")
    try:
        for host in workers:
            worker_host(host, config, cluster.s3.env)
        (first_year, first_month), (last_year, last_month) = months(args.months)[0], months(args.months)[-1]
        log.info("run %d: %d months on %d worker host(s)", run, args.months, hosts)
        started = time.perf_counter()
        proc = submitter.start([str(speed.ROOT / "scripts" / "backfill"), "green", f"{first_year}-{first_month:02d}",
                                f"{last_year}-{last_month:02d}", "--workers", "0"], config, cluster.s3.env)
        returncode = proc.wait()
        wall = time.perf_counter() - started
        if returncode not in (0, 25):  # 25: every task ran on another host ([retcode] not_run)
            raise SystemExit(f"backfill exited {returncode}:\n{submitter.log.read_text()[-3000:]}")
        return {"hosts": hosts, "wall_seconds": wall, **task_seconds(cluster, f"luigid_run{run}")}
    finally:
        for host in [*workers, submitter]:
            host.stop()
        luigid.stop()
        mlflow.stop()


def task_seconds(cluster: Cluster, database: str) -> dict:
    """Seconds spent in the pipeline's tasks, in all and by task: from each RUNNING event in luigid's history to the
    DONE or FAILED that ends that attempt (a failed attempt costs time too; a second DONE reported for a task that
    was already done adds nothing)."""
    with cluster.pg.connect(database) as conn:
        rows = list(conn.execute(
            "SELECT t.id, t.name, t.host, e.event_name, e.ts FROM tasks t JOIN task_events e ON e.task_id = t.id "
            "ORDER BY t.id, e.ts, e.id"))
    spans: list[tuple[str, str, float]] = []
    started: dict[int, datetime.datetime] = {}
    for record, name, host, event, ts in rows:
        if name not in PIPELINE_TASKS:
            continue
        if event == "RUNNING":
            started[record] = ts
        elif event in ("DONE", "FAILED") and record in started:
            spans.append((name, host, (ts - started.pop(record)).total_seconds()))
    by_task = {name: round(sum(s for n, _, s in spans if n == name), 1) for name in PIPELINE_TASKS}
    registrations = [s for n, _, s in spans if n == "RegisterModel"]
    return {"task_seconds": round(sum(s for _, _, s in spans), 1), "by_task_seconds": by_task,
            "hosts_that_ran_tasks": len({host for _, host, _ in spans}),
            "register_seconds": round(statistics.mean(registrations), 1) if registrations else None}


def summarize(args: argparse.Namespace, runs: list[dict], load_before: tuple[float, ...]) -> dict:
    """Median wall per host count, their ratio, and the 12-month x 2-color estimate from the 1-host runs."""
    wall = {h: statistics.median(r["wall_seconds"] for r in runs if r["hosts"] == h) for h in (1, 2)}
    one = [r for r in runs if r["hosts"] == 1]
    per_month = statistics.median(r["task_seconds"] for r in one) / args.months
    overhead = statistics.median(r["wall_seconds"] - r["task_seconds"] for r in one) / args.months
    register = statistics.median(r["register_seconds"] for r in one)
    estimate = {hosts: round(max(math.ceil(ESTIMATE_MONTHS / hosts) * (per_month + overhead),
                                 ESTIMATE_MONTHS * register)) for hosts in ESTIMATE_HOSTS}
    ratio = wall[2] / wall[1]
    return {
        "months": args.months, "rows": args.rows, "max_evals": args.max_evals or "luigi.cfg", "repeat": args.repeat,
        "wall_seconds": {f"{h}_hosts": round(s, 1) for h, s in wall.items()}, "ratio_2_to_1": round(ratio, 3),
        "per_month_seconds": round(per_month, 1), "overhead_per_month_seconds": round(overhead, 1),
        "register_seconds": register, "estimate_24_months_seconds": {f"{h}_hosts": s for h, s in estimate.items()},
        "runs": runs, "goals": {f"2 hosts take at most {GOAL_RATIO} of 1 host's wall time": ratio <= GOAL_RATIO},
        "machine": speed.machine(load_before),
    }


def table(summary: dict) -> str:
    wall = summary["wall_seconds"]
    lines = [f"| backfill of {summary['months']} months, {summary['rows']:,} rows/month, max_evals "
             f"{summary['max_evals']}, 1 thread per host | 1 host | 2 hosts |", "|---|---:|---:|",
             f"| wall, s (median of {summary['repeat']}) | {wall['1_hosts']:.1f} | {wall['2_hosts']:.1f} |",
             f"| ratio 2 hosts / 1 host | | {summary['ratio_2_to_1']:.2f} |",
             "", "| measured on 1 host | s |", "|---|---:|",
             f"| per month, in the pipeline's tasks | {summary['per_month_seconds']:.1f} |",
             f"| per month, scheduler overhead (wall minus task time) | {summary['overhead_per_month_seconds']:.1f} |",
             f"| one RegisterModel (one at a time across the cluster) | {summary['register_seconds']:.1f} |",
             "", f"| {ESTIMATE_MONTHS} months (12 x 2 colors), estimated | wall |", "|---|---:|"]
    for hosts, seconds in summary["estimate_24_months_seconds"].items():
        lines.append(f"| {hosts.split('_')[0]} host(s) | {seconds / 60:.0f} min |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The same backfill on 1 and on 2 single-threaded worker hosts.")
    parser.add_argument("--months", type=int, default=4, help="training months in the backfill (default %(default)s)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per synthetic month (default %(default)s)")
    parser.add_argument("--max-evals", type=int, help="tuning trials per month (default: luigi.cfg's)")
    parser.add_argument("--repeat", type=int, default=1, help="run each host count this many times, alternating")
    parser.add_argument("--source-dir", default=str(speed.DEFAULT_SOURCE_DIR),
                        help="folder with the real green 2021-01 and 2021-02 TLC files (default %(default)s)")
    args = parser.parse_args(argv)
    if min(args.months, args.rows, args.max_evals or 1, args.repeat) < 1:
        parser.error("--months, --rows, --max-evals and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    args = parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="taxi-bench-cluster-") as tmp:
        cluster = Cluster(Path(tmp)).start(services=False)
        try:
            cluster.upload(write_months(Path(tmp), Path(args.source_dir), months(args.months + 1), args.rows))
            runs = [run_backfill(cluster, hosts, 2 * repeat + i, args)
                    for repeat in range(args.repeat) for i, hosts in enumerate((1, 2))]
        finally:
            cluster.stop()
    summary = summarize(args, runs, load_before)
    print(table(summary))
    speed.print_verdict(summary)


if __name__ == "__main__":
    main()
