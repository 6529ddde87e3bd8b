"""A cluster of the `cluster` profile on this machine, for tests/integration/test_cluster.py and scripts/bench-cluster,
all on 127.0.0.1: PostgreSQL, SeaweedFS, an MLflow server on PostgreSQL with its artifacts in the bucket, luigid with
config/luigid-cluster.cfg (task history in PostgreSQL), and hosts that run scripts/worker or scripts/backfill with
config/cluster.cfg.

A host is a process group in a UTS namespace of its own (its own hostname, which luigid records), running as an
unprivileged account of its own (a numeric uid with no other use) with a working directory, TMPDIR and HOME of mode
0700: it shares nothing with the other hosts but the services, as on separate machines.
"""

from __future__ import annotations

import configparser
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import synthetic
from tests.support.paths import BIN, ROOT
from tests.support.postgres import Postgres
from tests.support.runs import write_config
from tests.support.s3server import SeaweedS3
from tests.support.services import Service, free_port

BUCKET = "taxi"
PIPELINE_TASKS = (  # as luigid's task history names them
    "DownloadMonth", "CleanMonth", "BuildFeatures", "TuneHyperparams", "TrainModel", "RegisterModel")
UIDS = range(200_000, 2_000_000)  # far above any distribution's accounts, so a leftover file of an old run is unlikely


def shipped(name: str) -> dict[str, dict[str, str]]:
    """The sections of config/<name>.cfg as written."""
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(ROOT / "config" / f"{name}.cfg"), f"config/{name}.cfg is missing"
    return {section: dict(parser[section]) for section in parser.sections()}


def merged(base: dict, overrides: dict) -> dict[str, dict[str, str]]:
    return {s: {**base.get(s, {}), **overrides.get(s, {})} for s in dict.fromkeys([*base, *overrides])}


def free_uids(count: int) -> list[int]:
    """`count` random uids that no account of this machine has and no process runs as."""
    busy = {os.stat(f"/proc/{pid}").st_uid for pid in os.listdir("/proc") if pid.isdigit()}
    uids: list[int] = []
    while len(uids) < count:
        uid = secrets.choice(UIDS)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in busy and uid not in uids:
                uids.append(uid)
    return uids


def private_folder(path: Path, uid: int) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, uid, uid)
    return path


class Host:
    """One machine of the cluster: an account, a hostname, and its own working directory, TMPDIR and HOME."""

    def __init__(self, name: str, uid: int, base: Path, logs: Path):
        self.name, self.uid = name, uid
        self.folder = private_folder(base / name, uid)
        self.home, self.work, self.tmp = (private_folder(self.folder / sub, uid) for sub in ("home", "work", "tmp"))
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def env(self, config: Path, extra: dict[str, str]) -> dict[str, str]:
        """A fresh environment, as a service manager gives it: nothing of the test process's own."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.home),
                "TMPDIR": str(self.tmp), "USER": self.name, "LOGNAME": self.name, "LUIGI_CONFIG_PATH": str(config),
                **extra}

    def start(self, argv: list[str], config: Path, extra_env: dict[str, str]) -> subprocess.Popen:
        """Run `argv` on this host: new UTS and mount namespaces, its hostname, its account, its working directory."""
        become = (f'hostname "$0" && {self._reach_python()}'
                  f'exec setpriv --reuid={self.uid} --regid={self.uid} --clear-groups -- "$@"')
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["unshare", "--uts", "--mount", "--", "sh", "-c", become, self.name, *argv],
                                         cwd=self.work, env=self.env(config, extra_env), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def _reach_python(self) -> str:
        """Shell commands that let the host's account run the venv's interpreter when it lives in a private folder
        (pyenv under /root): in the host's mount namespace that folder becomes an empty tmpfs with the interpreter's
        tree bound back in. Nothing changes outside the namespace."""
        prefix = Path(sys.base_prefix)
        blocked = next((p for p in reversed(prefix.parents) if not p.stat().st_mode & stat.S_IXOTH), None)
        if blocked is None:
            return ""
        stage = self.folder / "python"
        stage.mkdir(mode=0o755)
        return (f"mount --bind {prefix} {stage} && mount -t tmpfs -o mode=0755 tmpfs {blocked} && "
                f"mkdir -p {prefix} && mount --bind {stage} {prefix} && ")

    def kill(self) -> None:
        """SIGKILL to every process of the host, as a power cut would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_host(host: Host, config: Path, env: dict[str, str]) -> subprocess.Popen:
    """scripts/worker with one single-threaded assistant on `host`."""
    return host.start([str(ROOT / "scripts" / "worker"), "--workers", "1"], config, env)


def files_owned_by(uids: set[int]) -> list[Path]:
    """Every path of this machine owned by one of `uids` (/proc and /sys aside)."""
    found = subprocess.run(["find", "/", "(", "-path", "/proc", "-o", "-path", "/sys", ")", "-prune", "-o", "(",
                            *" -o ".join(f"-uid {uid}" for uid in sorted(uids)).split(), ")", "-print"],
                           capture_output=True, text=True)
    return [Path(line) for line in found.stdout.splitlines()]


def write_months(folder: Path, tlc_dir: Path, months: list[tuple[int, int]], rows: int) -> list[Path]:
    """Synthetic green months of `rows` trips resampled from the real 2021-01 and 2021-02, one seed each."""
    source = synthetic.read_sources([str(tlc_dir / f"green_tripdata_2021-0{m}.parquet") for m in (1, 2)])
    paths = []
    for seed, (year, month) in enumerate(months, start=1):
        path = folder / f"green_tripdata_{year}-{month:02d}.parquet"
        synthetic.write_month(synthetic.make_month(source, rows, "green", year, month, seed), str(path))
        paths.append(path)
    return paths


class Cluster:
    """The services every host talks to; `start()` brings them up in a scratch folder, `stop()` takes them down."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.pg = Postgres()
        self.s3 = SeaweedS3(workdir / "seaweedfs")
        self.mlflow: Service | None = None
        self.luigid: Service | None = None
        self.base = Path(tempfile.mkdtemp(prefix="taxi-cluster-"))  # the hosts' folders: not under root's 0700 tmp
        self.base.chmod(0o711)
        self.hosts: list[Host] = []

    def start(self, services: bool = True) -> "Cluster":
        """PostgreSQL, SeaweedFS with the bucket and, unless `services` is false, an MLflow server and luigid."""
        self.pg.start()
        self.s3.start()
        self.s3.create_bucket(BUCKET)
        if services:
            self.mlflow, self.luigid = self.services("")
        return self

    def services(self, name: str) -> tuple[Service, Service]:
        """Another MLflow server and luigid, each with a database of its own (suffix `name`)."""
        suffix = f"_{name}" if name else ""
        mlflow = mlflow_server(self.workdir / f"mlflow{suffix}", self.pg.create_database(f"mlflow{suffix}"), self,
                               f"mlartifacts{suffix}")
        return mlflow, luigid_server(self.workdir / f"luigid{suffix}", self.pg, f"luigid{suffix}")

    @property
    def secrets(self) -> dict[str, str]:
        return {"PGPASSWORD": self.pg.password, "AWS_SECRET_ACCESS_KEY": self.s3.secret_key}

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            self.s3.client().upload_file(str(path), BUCKET, f"tlc/{path.name}")

    def add_hosts(self, *names: str) -> list[Host]:
        hosts = [Host(name, uid, self.base, self.workdir) for name, uid in zip(names, free_uids(len(names)))]
        self.hosts += hosts
        return hosts

    def profile(self, path: Path, overrides: dict | None = None, *, mlflow: Service | None = None,
                luigid: Service | None = None) -> Path:
        """config/cluster.cfg pointed at this cluster's ports, readable by every host's account."""
        config = write_config(path, merged(shipped("cluster"), merged({
            "core": {"scheduler_url": (luigid or self.luigid).url},
            "s3": {"endpoint_url": self.s3.endpoint},
            "mlflow": {"tracking_uri": (mlflow or self.mlflow).url},
        }, overrides or {})))
        config.chmod(0o644)
        return config

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        for service in (self.luigid, self.mlflow):
            if service:
                service.stop()
        self.s3.stop()
        self.pg.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def mlflow_server(workdir: Path, backend_uri: str, cluster: Cluster, artifacts: str) -> Service:
    """`mlflow server` on `backend_uri` with artifacts in the bucket; S3 keys and PGPASSWORD in its environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return Service(f"mlflow server on {backend_uri.split(':')[0]}", [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri, "--artifacts-destination", f"s3://{BUCKET}/{artifacts}",
    ], port, "/health", workdir / "mlflow.log", env={
        "MLFLOW_S3_ENDPOINT_URL": cluster.s3.endpoint, **cluster.s3.env, **cluster.pg.env,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}).start()


def luigid_server(workdir: Path, pg: Postgres, database: str) -> Service:
    """luigid as the central host runs it: config/luigid-cluster.cfg, task history in a database of its own."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir / "luigid.cfg", merged(shipped("luigid-cluster"), {
        "task_history": {"db_connection": pg.create_database(database)}}))
    port = free_port()
    return Service("luigid", [str(BIN / "python"), "-m", "taxi.luigid", "--address", "127.0.0.1", "--port", str(port),
                              "--state-path", str(workdir / "state.pickle"), "--logdir", str(workdir)],
                   port, "/api/graph", workdir / "luigid.log",
                   env={"LUIGI_CONFIG_PATH": str(config), **pg.env}).start()
