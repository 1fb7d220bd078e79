"""A real Slurm 22.05 cluster with accounting on this machine, for the tests and local development.

``SlurmCluster(base_dir)`` runs Debian's own daemons as root, without systemd or cgroups: ``munged``
(own socket and key), ``slurmdbd`` (storing into a database of the MariaDB on 127.0.0.1:3306),
``slurmctld`` and ``slurmd`` (one node, ``localhost``, with 8 CPUs and 2 fake GPUs made with ``mknod``, in
two partitions: ``debug``, the default, and ``gpu``).
Everything it writes (configuration, state, spool, logs, pid files, the munge key and socket) lies under
``base_dir``; stopping it leaves no process behind, and starting it again on the same folder reuses the
saved state and database (a restart takes about 2 s, a first start about 5 s). Ports are chosen free at
each start, so several clusters (one per pytest-xdist worker, say) can run side by side.

Clients (``sinfo``, ``sbatch``, ``sacct``, ``sacctmgr``, the portal's ``portal slurm sync``) find the
cluster through ``SLURM_CONF``: use ``cluster.env`` or ``cluster.run(...)``.

    cluster = SlurmCluster(Path("/tmp/slurm")).start()
    cluster.run("sbatch", "--wrap", "sleep 2", "--gres=gpu:1")
    cluster.stop()        # or cluster.destroy() to drop its database and folder too
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from portal_standin.devstack import patience

#: Debian packages that provide the daemons and clients.
PACKAGES = ("slurm-wlm", "slurmdbd", "munge")
#: Programs that must be on PATH once the packages are installed.
PROGRAMS = ("munged", "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sacct", "sbatch", "squeue", "sinfo")
#: Daemons in the order they start (and stop in reverse).
DAEMONS = ("munged", "slurmdbd", "slurmctld", "slurmd")

_apt_updated = False


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (packages missing and not installable, or no MariaDB)."""


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded here: no dlopen after fork
except OSError:  # pragma: no cover
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Make the daemon receive SIGTERM when the process that started it dies (even by SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", port))  # the daemons listen on every interface
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
            ports.append(int(s.getsockname()[1]))
    finally:
        for s in sockets:
            s.close()
    return ports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as gone
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def ensure_installed() -> None:
    """Install the Debian packages (and a MariaDB client) when a program is missing; root only."""
    global _apt_updated
    missing = [p for p in PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    packages = list(PACKAGES) if missing else []
    if shutil.which("mysql") is None and shutil.which("mariadb") is None:
        packages.append("mariadb-client")
    if not packages:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"{', '.join(missing or ['mysql'])} missing; install with: apt-get install -y {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the packages' maintainer scripts from starting system-wide daemons.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        if not _apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
            _apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=True,
            env=env,
            capture_output=True,
            timeout=900,
        )
    except subprocess.CalledProcessError as exc:
        raise SlurmUnavailable(f"apt-get failed: {exc.stderr.decode(errors='replace')[-2000:]}") from exc
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


@dataclass
class SlurmCluster:
    """One-node Slurm cluster with slurmdbd accounting, kept entirely under ``base``."""

    base: Path
    cluster_name: str = "factory"
    #: CPUs the node declares (``config_overrides``: more than the machine has, so that a notebook job, a
    #: Dask Gateway scheduler and its workers fit side by side on a 2-core test machine).
    cpus: int = 8
    gpus: int = 2
    #: Memory the node declares, in MB: at most what the machine has (slurmctld drains a node reporting less);
    #: memory is not a consumable with ``CR_CPU``, but a job's ``--mem`` must fit.
    memory_mb: int = 16000
    mysql_host: str = "127.0.0.1"
    mysql_port: int = 3306
    #: A MariaDB account allowed to create databases and users (used only to set slurmdbd's up).
    mysql_admin_user: str = "root"
    mysql_admin_password: str = ""
    #: slurmdbd's database; by default named after the folder, so each folder has its own.
    database: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = Path(self.base).resolve()
        digest = hashlib.sha256(str(self.base).encode()).hexdigest()[:10]
        if not self.database:
            self.database = f"slurm_{self.cluster_name}_{digest}"
        self.db_user = f"slurm_{digest}"
        self.db_password = hashlib.sha256(f"portal-devstack-{digest}".encode()).hexdigest()[:24]

    # --- paths -----------------------------------------------------------------------------------------

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.base / "munge" / "munge.socket"

    def log(self, daemon: str) -> Path:
        return self.base / "log" / f"{daemon}.log"

    def pid_file(self, daemon: str) -> Path:
        return self.base / "run" / f"{daemon}.pid"

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands: the process's own plus ``SLURM_CONF`` and UTC times."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "TZ": "UTC"}

    # --- commands --------------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """Where client commands run: jobs write their ``slurm-<id>.out`` here, not in the caller's folder."""
        return self.base / "work"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster (in ``workdir``); output as text."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.workdir
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited with {result.returncode}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def sacctmgr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sacctmgr", "-i", *args, check=check)

    def _mysql(self, sql: str) -> None:
        client = shutil.which("mariadb") or shutil.which("mysql") or "mysql"
        args = [client, "-h", self.mysql_host, "-P", str(self.mysql_port), "-u", self.mysql_admin_user, "-e", sql]
        env = {**os.environ}
        if self.mysql_admin_password:
            env["MYSQL_PWD"] = self.mysql_admin_password
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SlurmUnavailable(f"MariaDB at {self.mysql_host}:{self.mysql_port}: {result.stderr.strip()}")

    # --- set-up ----------------------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        saved = self.base / "run" / "ports.json"
        ports: dict[str, int] = {}
        if saved.exists():
            with contextlib.suppress(ValueError):
                ports = {k: int(v) for k, v in json.loads(saved.read_text()).items()}
        names = ("slurmctld", "slurmd", "slurmdbd")
        if sorted(ports) != sorted(names) or not all(_port_is_free(p) for p in ports.values()):
            ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.ports = ports
        saved.write_text(json.dumps(ports))

    def _write_files(self) -> None:
        for sub in ("etc", "munge", "log", "run", "state", "spool", "dev"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        (self.base / "munge").chmod(0o700)
        key = self.base / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for n in range(self.gpus):
            device = self.base / "dev" / f"nvidia{n}"
            if not device.exists():
                os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(195, n))
        self._choose_ports()
        sock = self.munge_socket
        gpu_files = f"{self.base / 'dev'}/nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else f"{self.base}/dev/nvidia0"
        self.conf.write_text(
            f"""# written by portal_standin.devstack_slurm; rewritten at each start
ClusterName={self.cluster_name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={self.base / "state"}
SlurmdSpoolDir={self.base / "spool"}
SlurmctldPidFile={self.pid_file("slurmctld")}
SlurmdPidFile={self.pid_file("slurmd")}
SlurmctldLogFile={self.log("slurmctld")}
SlurmdLogFile={self.log("slurmd")}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=5
InactiveLimit=0
MinJobAge=300
# usage-based limits (GrpTRESMins) need the multifactor plugin; no decay, no reset: Slurm's usage of an
# account grows like the portal's charges (see "Slurm" in README.md)
PriorityType=priority/multifactor
PriorityDecayHalfLife=0
PriorityUsageResetPeriod=NONE
PriorityCalcPeriod=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={self.ports["slurmdbd"]}
AccountingStoragePass={sock}
AccountingStorageTRES=gres/gpu
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
        )
        (self.etc / "gres.conf").write_text(f"AutoDetect=off\nNodeName=localhost Name=gpu File={gpu_files}\n")
        (self.etc / "cgroup.conf").unlink(missing_ok=True)
        dbd = self.etc / "slurmdbd.conf"
        dbd.write_text(
            f"""# written by portal_standin.devstack_slurm; rewritten at each start
AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["slurmdbd"]}
SlurmUser=root
PidFile={self.pid_file("slurmdbd")}
LogFile={self.log("slurmdbd")}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost={self.mysql_host}
StoragePort={self.mysql_port}
StorageUser={self.db_user}
StoragePass={self.db_password}
StorageLoc={self.database}
"""
        )
        dbd.chmod(0o600)

    def _create_database(self) -> None:
        stamp = self.base / "run" / "database"
        if stamp.exists() and stamp.read_text() == self.database:
            return
        grants = []
        for host in ("localhost", "127.0.0.1"):
            grants.append(f"CREATE USER IF NOT EXISTS '{self.db_user}'@'{host}' IDENTIFIED BY '{self.db_password}';")
            grants.append(f"GRANT ALL ON `{self.database}`.* TO '{self.db_user}'@'{host}';")
            grants.append(f"GRANT ALL ON `{self.database}\\_%`.* TO '{self.db_user}'@'{host}';")
        # a new folder starts from an empty database (Slurm's job ids start again at 1)
        self._mysql(
            f"DROP DATABASE IF EXISTS `{self.database}`; CREATE DATABASE `{self.database}`; "
            f"{' '.join(grants)} FLUSH PRIVILEGES;"
        )
        stamp.write_text(self.database)

    # --- daemons ---------------------------------------------------------------------------------------

    def _command(self, daemon: str) -> list[str]:
        if daemon == "munged":
            munge = self.base / "munge"
            return [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={munge / 'munge.key'}",
                f"--pid-file={self.pid_file('munged')}",
                f"--log-file={self.log('munged')}",
                f"--seed-file={munge / 'munged.seed'}",
                "--num-threads=4",
            ]
        if daemon == "slurmdbd":
            return ["slurmdbd", "-D", "-s"]
        if daemon == "slurmctld":
            return ["slurmctld", "-D", "-s", "-f", str(self.conf)]
        return ["slurmd", "-D", "-s", "-N", "localhost", "-f", str(self.conf)]

    def _spawn(self, daemon: str) -> None:
        # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        out = self.log(f"{daemon}.stdout").open("ab")
        try:
            self.processes[daemon] = subprocess.Popen(
                self._command(daemon),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        (self.base / "run" / f"{daemon}.child").write_text(str(self.processes[daemon].pid))

    def _check_running(self, daemon: str) -> None:
        process = self.processes.get(daemon)
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{daemon} exited with {process.returncode}:\n{self._tail(daemon)}")

    def _tail(self, daemon: str, lines: int = 30) -> str:
        text = ""
        for path in (self.log(daemon), self.log(f"{daemon}.stdout")):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def _wait(self, what: str, daemon: str, ready, timeout: float = 60) -> None:
        timeout = patience(timeout)  # more on a busy machine
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running(daemon)
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready within {timeout:.0f} s:\n{self._tail(daemon)}")

    def _ok(self, *args: str) -> bool:
        try:
            return self.run(*args, check=False, timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _node_state(self) -> str:
        result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=15)
        # one line per partition the node is in, each with the node's state
        lines = result.stdout.split() if result.returncode == 0 else []
        return lines[0] if lines else ""

    def start(self) -> SlurmCluster:
        """Install what is missing, write the configuration and start the four daemons; wait until ready."""
        ensure_installed()
        self.base.mkdir(parents=True, exist_ok=True)
        self.kill_leftovers()
        self._write_files()
        self._create_database()
        try:
            self._spawn("munged")
            self._wait("munged", "munged", self.munge_socket.exists, timeout=20)
            self._spawn("slurmdbd")
            self._wait("slurmdbd", "slurmdbd", lambda: self._ok("sacctmgr", "--noheader", "show", "cluster"))
            self._spawn("slurmctld")
            self._wait("slurmctld", "slurmctld", lambda: self._ok("scontrol", "ping"))
            self._spawn("slurmd")

            def node_up() -> bool:
                state = self._node_state()
                if any(word in state for word in ("drain", "down", "fail")):
                    self.run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
                return state in ("idle", "mixed", "allocated")

            self._wait("slurmd (node localhost)", "slurmd", node_up)
            self._wait(
                "the cluster in slurmdbd with TRES gres/gpu",
                "slurmctld",
                lambda: (
                    self.cluster_name in self.run("sacctmgr", "-n", "-P", "show", "cluster", "format=cluster").stdout
                    and "gres/gpu"
                    in self.run("sacctmgr", "-n", "-P", "show", "tres", "format=type,name").stdout.replace("|", "/")
                ),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons (slurmd first) and anything they left running; no leftovers."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                user = pwd.getpwuid(os.geteuid()).pw_name
                if self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.strip():
                    self.run("scancel", f"--user={user}", check=False, timeout=10)
                    deadline = time.monotonic() + 10
                    while (
                        time.monotonic() < deadline
                        and self.run("squeue", "-h", "-t", "R,CG,S", "-o", "%i", check=False, timeout=10).stdout.strip()
                    ):
                        time.sleep(0.2)
        for daemon in reversed(DAEMONS):
            process = self.processes.pop(daemon, None)
            if process is not None:
                self._terminate(process.pid, process)
        self.kill_leftovers()

    def destroy(self) -> None:
        """Stop, then drop the database and its user and delete the folder."""
        self.stop()
        with contextlib.suppress(SlurmUnavailable):
            drops = " ".join(f"DROP USER IF EXISTS '{self.db_user}'@'{h}';" for h in ("localhost", "127.0.0.1"))
            self._mysql(f"DROP DATABASE IF EXISTS `{self.database}`; {drops}")
        shutil.rmtree(self.base, ignore_errors=True)

    @staticmethod
    def _terminate(pid: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 10) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait(5)

    def _our_pids(self) -> set[int]:
        """Processes of this cluster still alive: the daemons (pid files), job steps (``slurmstepd`` with
        files open under the base folder) and the jobs' own processes (``SLURM_CONF`` in their environment)."""
        pids: set[int] = set()
        for name in DAEMONS:
            for path in (self.pid_file(name), self.base / "run" / f"{name}.child"):
                with contextlib.suppress(OSError, ValueError):
                    pid = int(path.read_text().strip())
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    if Path(cmdline).name == name:
                        pids.add(pid)
        base = str(self.base) + "/"
        marker = f"SLURM_CONF={self.conf}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if (proc / "cmdline").read_bytes().startswith(b"slurmstepd"):
                    for fd in (proc / "fd").iterdir():
                        with contextlib.suppress(OSError):
                            if os.readlink(fd).startswith(base):
                                pids.add(int(proc.name))
                                break
                elif marker in (proc / "environ").read_bytes().split(b"\0") and (
                    # a job's process (jobs run in the work folder), not a client that has this env
                    os.readlink(proc / "cwd").startswith(base) or b"slurm_script" in (proc / "cmdline").read_bytes()
                ):
                    pids.add(int(proc.name))
        return {pid for pid in pids if pid != os.getpid() and _alive(pid)}

    def kill_leftovers(self) -> None:
        """End what an earlier run on this folder left behind (a crash, a killed test run)."""
        pids = self._our_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in DAEMONS:
            self.pid_file(name).unlink(missing_ok=True)
            (self.base / "run" / f"{name}.child").unlink(missing_ok=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual use: python -m portal_standin.devstack_slurm [DIR]
    import sys

    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "portal-slurm"
    cluster = SlurmCluster(base)
    started = time.monotonic()
    cluster.start()
    print(f"Slurm cluster '{cluster.cluster_name}' up in {time.monotonic() - started:.1f} s under {base}")
    print(f"export SLURM_CONF={cluster.conf}")
    print("Ctrl-C stops it.")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
