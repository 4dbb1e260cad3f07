"""`jobvault service install | uninstall | status`: run jobvault as a user service.

Linux: the systemd user units (`jobvault.service`, Type=notify, and `jobvault.socket` for socket
activation) go to ~/.config/systemd/user/. macOS: the launchd agent goes to
~/Library/LaunchAgents/. The templates live in the repository's `systemd/` folder (packaged as
`jobvault/service/units`); install points them at the absolute path of the installed `jobvault`.
The daemon never forks itself: the service manager runs it in the foreground.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from jobvault import paths
from jobvault.errors import JobvaultError, NotFoundError

LABEL = "com.jobvault.daemon"


class ServiceError(JobvaultError):
    """The service manager refused a command."""


@dataclass(frozen=True)
class Plan:
    """What an install would do: files to write and commands to run, in order."""

    files: dict[Path, str]
    commands: list[list[str]]


def jobvault_binary() -> Path:
    """The absolute path of the installed `jobvault` command."""
    beside = Path(sys.executable).parent / "jobvault"
    if beside.exists():
        return beside.absolute()
    found = shutil.which("jobvault")
    if found:
        return Path(found).absolute()
    raise NotFoundError("cannot find the installed `jobvault` command (is it on PATH?)")


def _template(name: str) -> str:
    return (files("jobvault.service") / "units" / name).read_text()


def systemd_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else paths.home() / ".config") / "systemd" / "user"


def launch_agents_dir() -> Path:
    return paths.home() / "Library" / "LaunchAgents"


def systemd_units(binary: Path) -> dict[Path, str]:
    service = re.sub(
        r"^ExecStart=.*$", f"ExecStart={binary} run", _template("jobvault.service"), flags=re.M
    )
    return {
        systemd_dir() / "jobvault.service": service,
        systemd_dir() / "jobvault.socket": _template("jobvault.socket"),
    }


def launchd_plist(binary: Path) -> dict[Path, str]:
    plist = plistlib.loads(_template(f"{LABEL}.plist").encode())
    plist["ProgramArguments"] = [str(binary), "run"]
    logs = paths.home() / "Library" / "Logs" / "jobvault" / "jobvault.log"
    plist["StandardOutPath"] = plist["StandardErrorPath"] = str(logs)
    return {launch_agents_dir() / f"{LABEL}.plist": plistlib.dumps(plist).decode()}


def install_plan(platform: str = sys.platform, binary: Path | None = None) -> Plan:
    binary = binary or jobvault_binary()
    if platform == "darwin":
        units = launchd_plist(binary)
        target = f"gui/{os.getuid()}"
        plist = next(iter(units))
        return Plan(units, [
            ["launchctl", "bootout", f"{target}/{LABEL}"],
            ["launchctl", "bootstrap", target, str(plist)],
        ])  # fmt: skip
    return Plan(
        systemd_units(binary),
        [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", "jobvault.socket"],
            ["systemctl", "--user", "enable", "--now", "jobvault.service"],
        ],
    )


def uninstall_plan(platform: str = sys.platform) -> Plan:
    if platform == "darwin":
        plist = launch_agents_dir() / f"{LABEL}.plist"
        return Plan({plist: ""}, [["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"]])
    unit_dir = systemd_dir()
    return Plan(
        {unit_dir / "jobvault.service": "", unit_dir / "jobvault.socket": ""},
        [
            ["systemctl", "--user", "disable", "--now", "jobvault.service", "jobvault.socket"],
            ["systemctl", "--user", "daemon-reload"],
        ],
    )


def status_commands(platform: str = sys.platform) -> list[list[str]]:
    if platform == "darwin":
        return [["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"]]
    return [
        ["systemctl", "--user", "is-enabled", "jobvault.socket", "jobvault.service"],
        ["systemctl", "--user", "is-active", "jobvault.socket", "jobvault.service"],
    ]


def _run(command: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ServiceError(f"`{command[0]}` is not installed on this machine") from None
    if check and done.returncode != 0:
        raise ServiceError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.stdout}")
    return done


def install(plan: Plan, *, dry_run: bool, out: list[str]) -> None:
    for path, content in plan.files.items():
        out.append(f"write {path}")
        if dry_run:
            out.extend("    " + line for line in content.splitlines())
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    for i, command in enumerate(plan.commands):
        out.append("run   " + " ".join(command))
        if not dry_run:
            # launchctl bootout of an agent that is not loaded fails: that is fine.
            optional = command[:2] == ["launchctl", "bootout"] and i == 0
            _run(command, check=not optional)


def uninstall(plan: Plan, *, dry_run: bool, out: list[str]) -> None:
    for command in plan.commands[:1]:
        out.append("run   " + " ".join(command))
        if not dry_run:
            _run(command, check=False)  # not running or not loaded is fine
    for path in plan.files:
        out.append(f"remove {path}")
        if not dry_run and path.exists():
            path.unlink()
    for command in plan.commands[1:]:
        out.append("run   " + " ".join(command))
        if not dry_run:
            _run(command, check=False)


def status(platform: str = sys.platform) -> tuple[bool, list[str]]:
    """Return (installed and running, the service manager's words)."""
    out: list[str] = []
    ok = True
    for command in status_commands(platform):
        done = _run(command, check=False)
        out.append(f"$ {' '.join(command)}")
        out.extend(line for line in (done.stdout + done.stderr).strip().splitlines())
        ok = ok and done.returncode == 0
    return ok, out
