"""The project's reverse proxy (scripts/proxy: Debian's nginx with config/nginx/taxi.conf) as an unprivileged
process on free loopback ports, with a self-signed certificate and a password file made here; an MLflow server with
its basic-auth app to put behind it; and the client side of basic auth the way workers do it (a netrc file)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import requests

from tests.support.paths import BIN, ROOT
from tests.support.services import Service, free_port, wait_until

OS_USER = "www-data"  # the proxy's account when the tests run as root (scripts/proxy refuses root)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem). The certificate is also the CA
    that clients trust (REQUESTS_CA_BUNDLE)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An nginx password file with an apr1 hash per user; the passwords go to openssl on stdin."""
    lines = [f"{user}:" + subprocess.run(["openssl", "passwd", "-apr1", "-stdin"], input=password, text=True,
                                         check=True, capture_output=True).stdout.strip()
             for user, password in users.items()]
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)
    return path


def write_netrc(path: Path, user: str, password: str, host: str = "127.0.0.1") -> Path:
    path.write_text(f"machine {host}\nlogin {user}\npassword {password}\n")
    path.chmod(0o600)
    return path


def copy_script(folder: Path) -> Path:
    """scripts/proxy and its template copied as they are into `folder`/checkout (www-data may not reach a checkout
    under /root); the copy of scripts/proxy."""
    for path in ("scripts/proxy", "config/nginx/taxi.conf"):
        (folder / "checkout" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, folder / "checkout" / path)
    return folder / "checkout/scripts/proxy"


class Proxy:
    """scripts/proxy in the background with luigid's `users` (name -> password): `luigid_url` and `mlflow_url` are
    its https addresses, `cert` the certificate clients trust. Its files (password file, key, logs) are in a folder
    of its own under the system temporary folder, owned by www-data when the tests run as root."""

    def __init__(self, luigid_port: int, mlflow_port: int, users: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="taxi-proxy-"))
        self.log = self.folder / "proxy.log"
        self.cert, self.key = make_certificate(self.folder)
        write_htpasswd(self.folder / "htpasswd", users)
        self.script = copy_script(self.folder)
        self.as_user = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        if self.as_user:
            owner = pwd.getpwnam(OS_USER)
            for path in [self.folder, *self.folder.rglob("*")]:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.luigid_port, self.mlflow_port = free_port(), free_port()
        # the folders as systemd hands them to taxi-proxy.service (credentials, runtime and logs directories)
        self.env = {**os.environ, "CREDENTIALS_DIRECTORY": str(self.folder),
                    "RUNTIME_DIRECTORY": str(self.folder / "state"), "LOGS_DIRECTORY": str(self.folder / "logs"),
                    "PROXY_LUIGID_LISTEN": f"127.0.0.1:{self.luigid_port}",
                    "PROXY_MLFLOW_LISTEN": f"127.0.0.1:{self.mlflow_port}",
                    "LUIGID_PORT": str(luigid_port), "MLFLOW_PORT": str(mlflow_port)}
        self.proc: subprocess.Popen | None = None

    @property
    def luigid_url(self) -> str:
        return f"https://127.0.0.1:{self.luigid_port}"

    @property
    def mlflow_url(self) -> str:
        return f"https://127.0.0.1:{self.mlflow_port}"

    def start(self) -> "Proxy":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.as_user, str(self.script)], stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        try:
            wait_until(lambda: self.proc.poll() is None  # any answer: nginx is up (what it answers is the tests')
                       and requests.get(self.luigid_url, verify=str(self.cert), timeout=2).status_code > 0,
                       f"proxy ({self.log})", timeout=30)
        except TimeoutError:
            self.stop()
            raise
        return self

    def logs(self) -> str:
        """Everything the proxy wrote: its error log (stdout/stderr) and its access log."""
        return "".join(path.read_text(errors="replace") for path in self.folder.rglob("*.log"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(20)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def mlflow_auth_service(workdir: Path, admin_password: str) -> Service:
    """`mlflow server --app-name basic-auth` on sqlite, its admin `admin` with `admin_password`, unknown users
    seeing nothing."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    ini = workdir / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{workdir}/auth.db\n"
                   "admin_username = admin\nauthorization_function = "
                   "mlflow.server.auth:authenticate_request_basic_auth\n")
    return Service("mlflow server (basic-auth)", [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
        "--artifacts-destination", str(workdir / "artifacts"),
    ], port, "/health", workdir / "mlflow.log", env={
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()})


def session(source: str = "127.0.0.1") -> requests.Session:
    """A requests session whose connections come from the loopback address `source` (any 127.x.y.z): another
    client, as nginx sees it, than the workers on 127.0.0.1."""
    adapter = requests.adapters.HTTPAdapter()
    adapter.init_poolmanager(connections=10, maxsize=10, source_address=(source, 0))
    client = requests.Session()
    client.trust_env = False  # no netrc, no proxy settings of the test process
    client.mount("https://", adapter)
    return client
