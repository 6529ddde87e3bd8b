"""The systemd units as systemd itself reads them: `systemd-analyze verify` (nothing on stderr), `systemd-analyze
security` (the exposure docs/operations.md "Install on a server" states for each unit), the timer's calendar, and the
sysusers/tmpfiles snippets applied to a scratch root.

The units name their files under /opt/taxi, where docs/operations.md "Install on a server" installs this checkout.
systemd-analyze checks that executables exist, so verification runs against a scratch root holding the host's unit
library, our units and a stand-in for each /opt/taxi file; `test_units_name_files_of_this_checkout` checks the real
counterparts here.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.paths import ROOT

UNITS = ROOT / "systemd"
INSTALL_DIR = Path("/opt/taxi")
CHECKED_UNITS = ["luigid.service", "mlflow.service", "taxi-train@green.service", "taxi-train@yellow.timer",
                 "taxi-score@green.service", "taxi-score@yellow.timer", "taxi-worker.service", "taxi-web.service",
                 "taxi-proxy.service"]


def readme_exposures() -> dict[str, float]:
    """The exposure docs/operations.md "Install on a server" states per unit, from its sentence "... rates their
    exposure 1.1 (luigid, mlflow), 1.2 (taxi-train@, taxi-score@) and 1.1 (taxi-worker), "OK"": unit name prefix
    -> figure."""
    readme = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    sentence = re.search(r'rates their exposure (.+?), "OK"', readme).group(1)
    return {name.strip(): float(figure) for figure, names in re.findall(r"([\d.]+) \(([^)]+)\)", sentence)
            for name in names.split(",")}


def unit_files() -> list[Path]:
    return sorted([*UNITS.glob("*.service"), *UNITS.glob("*.timer")])


def installed_paths() -> set[Path]:
    """Every /opt/taxi/... path the units mention."""
    found = set()
    for unit in unit_files():
        found |= {Path(p) for p in re.findall(r"/opt/taxi/[\w./@-]+", unit.read_text())}
    return found


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory) -> Path:
    """A root with the host's unit library, our units in /etc/systemd/system and executable /opt/taxi stand-ins."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in unit_files():
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for path in installed_paths():
        stand_in = root / path.relative_to("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


def test_units_name_files_of_this_checkout():
    paths = installed_paths()
    assert INSTALL_DIR / "scripts/run-monthly" in paths and INSTALL_DIR / "config/server.cfg" in paths
    for path in paths:
        here = ROOT / path.relative_to(INSTALL_DIR)
        assert here.is_file(), f"{path} names {here}, which does not exist"
        if "/bin/" in str(path) or "/scripts/" in str(path):
            assert here.stat().st_mode & stat.S_IXUSR, f"{here} is not executable"


@pytest.mark.parametrize("unit", CHECKED_UNITS)
def test_unit_verifies_without_any_message(scratch_root, unit):
    done = subprocess.run(["systemd-analyze", "verify", f"--root={scratch_root}", unit],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr


def test_verify_reports_a_misspelt_key(scratch_root):
    """The check above is not vacuous: a misspelt key only warns, and the warning lands on stderr."""
    typo = scratch_root / "etc/systemd/system/typo.service"
    typo.write_text("[Service]\nExecStart=/opt/taxi/scripts/run-monthly green\nProtectSystm=strict\n")
    try:
        done = subprocess.run(["systemd-analyze", "verify", f"--root={scratch_root}", "typo.service"],
                              capture_output=True, text=True)
    finally:
        typo.unlink()
    assert done.returncode == 0 and "Unknown key 'ProtectSystm' in section [Service]" in done.stderr


@pytest.mark.parametrize("unit", ["luigid.service", "mlflow.service", "taxi-train@green.service",
                                  "taxi-score@green.service", "taxi-worker.service", "taxi-web.service",
                                  "taxi-proxy.service"])
def test_service_exposure_is_what_the_readme_says(scratch_root, unit, capsys):
    promised = next(figure for name, figure in readme_exposures().items() if unit.startswith(name))
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={scratch_root}",
                           f"--threshold={int(promised * 10)}", "--no-pager", unit], capture_output=True, text=True)
    exposure = float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", done.stdout).group(1))
    with capsys.disabled():  # the figure belongs in the CI log
        print(f"\nsystemd-analyze security --offline=true: {unit} exposure {exposure} (docs/operations.md: {promised})")
    assert done.returncode == 0 and exposure == promised, done.stdout[-2000:]


@pytest.mark.parametrize("unit,command", [("taxi-train@.service", "run-monthly"), ("taxi-score@.service", "score")])
def test_pipeline_service_sandbox(unit, command):
    text = (UNITS / unit).read_text()
    for line in ["Type=oneshot", "User=taxi", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/taxi", "PrivateTmp=yes", f"ExecStart=/opt/taxi/scripts/{command} %i"]:
        assert line in text.splitlines()


def timer_settings(unit: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (UNITS / unit).read_text().splitlines()
                if "=" in line and not line.startswith("#"))


@pytest.mark.parametrize("unit,day", [("taxi-train@.timer", "20"), ("taxi-score@.timer", "21")])
def test_timer_fires_monthly_and_catches_up(unit, day):
    settings = timer_settings(unit)
    assert settings["Persistent"] == "true" and settings["RandomizedDelaySec"] == "1h"
    calendar = subprocess.run(["systemd-analyze", "calendar", "--iterations=3", settings["OnCalendar"]],
                              capture_output=True, text=True, check=True).stdout
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d): \w+ (\d{4}-\d\d)-(\d\d) 03:00:00", calendar)
    months = [int(ym[:4]) * 12 + int(ym[5:]) for ym, _ in elapses]
    assert len(elapses) == 3 and {d for _, d in elapses} == {day}
    assert [b - a for a, b in zip(months, months[1:])] == [1, 1]


def test_scoring_runs_after_training():
    """The scoring timer fires a day after the training timer's latest start (its randomized delay included), and
    a scoring run started with the month's training (both caught up at boot) waits for it."""
    train, score = timer_settings("taxi-train@.timer"), timer_settings("taxi-score@.timer")
    assert score["OnCalendar"] == train["OnCalendar"].replace("-20 ", "-21 ")
    after = next(line for line in (UNITS / "taxi-score@.service").read_text().splitlines()
                 if line.startswith("After="))
    assert "taxi-train@%i.service" in after.split("=", 1)[1].split()


def test_user_and_store_folder_are_created(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "taxi.sysusers")], check=True,
                   capture_output=True)
    passwd = dict(line.split(":", 1) for line in (tmp_path / "etc/passwd").read_text().splitlines())
    uid, _, _, home, shell = passwd["taxi"].split(":")[1:]
    assert home == "/var/lib/taxi" and shell.endswith("nologin") and int(uid) < 1000
    subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(UNITS / "taxi.tmpfiles")], check=True,
                   capture_output=True)
    store = (tmp_path / "var/lib/taxi").stat()
    assert stat.S_IMODE(store.st_mode) == 0o750 and store.st_uid == int(uid)
