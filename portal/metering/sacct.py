"""Reading Slurm accounting (``sacct --parsable2 --noheader``) and deciding what a job is charged.

How jobs are charged, as a site operator expects:

- One charge per job allocation: the job's own row carries ``AllocTRES`` for the whole job. Step rows
  (``123.batch``, ``123.extern``, ``123.0``) describe parts of it and are skipped.
- Array tasks (``123_4``) and heterogeneous components (``123+0``) are separate allocations of
  resources; each is charged once, keyed by its ``JobIDRaw``, which is unique on the cluster.
- GPU allocations are charged GPUs × ``ElapsedRaw`` (``gres/gpu=N``, or the sum of ``gres/gpu:TYPE=N``
  when only typed counts are listed); CPU allocations ``cpu=N`` × ``ElapsedRaw``.
- Finished jobs are charged whether they completed, failed, were cancelled, timed out, ran out of memory,
  were preempted or hit their deadline: they held the resources. ``NODE_FAIL`` and ``BOOT_FAIL`` are the
  site's fault and are not charged. Pending, running, suspended and requeued jobs are not final and are
  charged by a later import, once they have ended.
- A job that never started (``Start`` is ``Unknown`` or ``ElapsedRaw`` is 0) has nothing to charge.
- Times are read as UTC: run sacct with ``TZ=UTC`` (the README's command does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

#: The fields, in this order, that ``portal usage import-sacct`` expects.
SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "Cluster",
    "Account",
    "User",
    "Partition",
    "AllocTRES",
    "ElapsedRaw",
    "Start",
    "End",
    "State",
)
SACCT_FORMAT = ",".join(SACCT_FIELDS)

CHARGED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "SPECIAL_EXIT"}
)
SITE_FAULT_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL"})
UNFINISHED_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "CONFIGURING",
        "COMPLETING",
    }
)
KNOWN_STATES = CHARGED_STATES | SITE_FAULT_STATES | UNFINISHED_STATES | {"REVOKED"}

_JOB_ID = re.compile(r"^\d+(?:_(?:\d+|\[[^\]]*\]))?(?:\+\d+)?(?:\.[A-Za-z0-9_-]+)?$")


@dataclass(frozen=True)
class SacctJob:
    line_number: int
    job_id: str
    job_id_raw: str
    cluster: str
    account: str
    user: str
    partition: str
    tres: dict[str, int]
    elapsed_seconds: int
    start: datetime | None
    end: datetime | None
    state: str

    @property
    def is_step(self) -> bool:
        return "." in self.job_id

    @property
    def gpus(self) -> int:
        if "gres/gpu" in self.tres:
            return self.tres["gres/gpu"]
        return sum(n for name, n in self.tres.items() if name.startswith("gres/gpu:"))

    @property
    def cpus(self) -> int:
        return self.tres.get("cpu", 0)


@dataclass(frozen=True)
class SacctProblem:
    line_number: int
    line: str
    reason: str


def _time(value: str, field: str) -> datetime | None:
    if value in ("Unknown", "None", ""):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{field} '{value}' is not a time") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_tres(value: str) -> dict[str, int]:
    """``cpu=4,mem=16G,node=1,billing=4,gres/gpu=2`` -> {"cpu": 4, "mem": 16000000000, ...}."""
    tres: dict[str, int] = {}
    if not value:
        return tres
    for part in value.split(","):
        name, sep, amount = part.partition("=")
        if not sep or not name:
            raise ValueError(f"AllocTRES part '{part}' is not name=count")
        multiplier = 1
        if amount and amount[-1] in _SUFFIX:
            multiplier, amount = _SUFFIX[amount[-1]], amount[:-1]
        try:
            tres[name] = int(float(amount) * multiplier) if "." in amount else int(amount) * multiplier
        except ValueError as exc:
            raise ValueError(f"AllocTRES count '{part}' is not a number") from exc
    return tres


def parse_line(line_number: int, line: str) -> SacctJob:
    fields = line.rstrip("\r\n").split("|")
    if len(fields) != len(SACCT_FIELDS):
        raise ValueError(f"expected {len(SACCT_FIELDS)} fields ({SACCT_FORMAT}), found {len(fields)}")
    job_id, raw, cluster, account, user, partition, tres, elapsed, start, end, state = fields
    if not _JOB_ID.match(job_id):
        raise ValueError(f"JobID '{job_id}' is not a Slurm job id")
    if not raw.split(".")[0].isdigit():
        raise ValueError(f"JobIDRaw '{raw}' is not a Slurm job id")
    if not elapsed.isdigit():
        raise ValueError(f"ElapsedRaw '{elapsed}' is not a number of seconds")
    state_word = state.split(" ")[0].rstrip("+")
    if state_word not in KNOWN_STATES:
        raise ValueError(f"State '{state}' is not a Slurm job state")
    return SacctJob(
        line_number=line_number,
        job_id=job_id,
        job_id_raw=raw,
        cluster=cluster,
        account=account.lower(),
        user=user,
        partition=partition,
        tres=parse_tres(tres),
        elapsed_seconds=int(elapsed),
        start=_time(start, "Start"),
        end=_time(end, "End"),
        state=state_word,
    )


def read_sacct(lines: Iterable[str]) -> Iterator[SacctJob | SacctProblem]:
    """Parse sacct output line by line (streamed: memory does not grow with the file)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield parse_line(number, line)
        except ValueError as exc:
            yield SacctProblem(number, line.rstrip("\r\n"), str(exc))


def why_not_charged(job: SacctJob) -> str | None:
    """None when the job is charged now; otherwise the reason it is not (or not yet)."""
    if job.is_step:
        return "job step (the job itself is charged)"
    if job.state in UNFINISHED_STATES:
        return f"not finished ({job.state}); charged once it ends"
    if job.state in SITE_FAULT_STATES:
        return f"{job.state}: a failure of the site, not charged"
    if job.state == "REVOKED":
        return "revoked (ran on another cluster of a federation)"
    if job.start is None or job.elapsed_seconds == 0:
        return "never ran"
    if job.end is None:
        return "no end time yet"
    return None
