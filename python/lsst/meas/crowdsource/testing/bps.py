"""Running ``bps submit`` (lsst.ctrl.bps through its Parsl plugin) on a local repository.

Test support for ``tests/test_bps.py``, the demo's ``--bps`` option and
``benchmarks/scale_out.py``: the command line for the submit files in the
package's ``bps/`` directory (`bps_submit_command`), the environment it needs
(`bps_environment`), and a monitor of the processes a run starts
(`SessionMonitor`).

A command started with ``start_new_session=True`` leads a session of its own;
every process it starts stays in that session, including the ones that leave
its process tree (Parsl's local provider starts the worker pool in a new
process group and lets its launching shell exit, so the pool is re-parented),
unless they call ``setsid`` themselves (none of BPS, Parsl or pipetask does).
Listing the session therefore shows what is still running after ``bps submit``
returned, and sampling it gives the peak memory of the whole run.  Linux only
(``/proc``).
"""

from __future__ import annotations

__all__ = [
    "run_in_session",
    "SessionMonitor",
    "bps_dir",
    "bps_environment",
    "bps_executable",
    "bps_submit_command",
    "output_run",
    "session_processes",
    "terminate_session",
]

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from lsst.meas.crowdsource.io.butler import config_dir

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def bps_dir() -> Path:
    """Return the package's ``bps/`` directory (the BPS submit files).

    Returns
    -------
    path : `pathlib.Path`
        ``$MEAS_CROWDSOURCE_DIR/bps`` or the ``bps/`` of the source tree.

    Raises
    ------
    FileNotFoundError
        Raised if the directory does not exist.
    """
    path = config_dir().parent / "bps"
    if not path.is_dir():
        raise FileNotFoundError(f"meas_crowdsource's bps/ directory {path} is missing")
    return path


def bps_executable(name: str = "bps") -> str:
    """Return the path of a console script of this Python environment.

    Parameters
    ----------
    name : `str`, optional
        ``"bps"``, ``"pipetask"`` or ``"butler"``.

    Returns
    -------
    path : `str`
        The script beside ``sys.executable``, else the one on ``PATH``.

    Raises
    ------
    FileNotFoundError
        Raised if there is neither.
    """
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"cannot find the {name} command (install lsst-ctrl-bps-parsl)")
    return found


def bps_submit_command(
    submit_file: str | os.PathLike[str],
    *,
    repo: str | os.PathLike[str],
    inputs: str,
    output: str,
    data_query: str,
    pipeline: str | os.PathLike[str] | None = None,
    compute_site: str | None = None,
    config_overrides: Sequence[str] = (),
    log_level: str = "INFO",
) -> list[str]:
    """Return the ``bps submit`` command line for one of the package's submit files.

    Parameters
    ----------
    submit_file : path-like
        BPS submit YAML, e.g. ``bps_dir() / "CrowdsourcePhotometry.yaml"``.
    repo : path-like
        Butler repository (``-b``, the payload's ``butlerConfig``).
    inputs : `str`
        Comma-separated input collections (``-i``, ``inCollection``).
    output : `str`
        Output CHAINED collection (``-o``); the outputs go to the RUN
        collection ``<output>/<timestamp>`` chained into it.
    data_query : `str`
        Data query (``-d``, ``dataQuery``).
    pipeline : path-like, optional
        Pipeline YAML (``-p``) instead of the submit file's ``pipelineYaml``.
    compute_site : `str`, optional
        Site of ``bps/parsl.yaml`` (``--compute-site``): ``local`` (its
        default), ``slurm`` or ``slac``.
    config_overrides : sequence of `str`, optional
        Task config overrides ``label:field=value`` (what ``pipetask -c``
        takes), passed to the quantum-graph build with
        ``--extra-qgraph-options``; the graph carries them to every job.
    log_level : `str`, optional
        Log level of the bps process itself.

    Returns
    -------
    command : `list` [`str`]
        Arguments for `subprocess.run`.
    """
    cmd = [bps_executable(), "--log-level", log_level, "submit", os.fspath(submit_file)]
    cmd += ["-b", os.fspath(repo), "-i", inputs, "-o", output, "-d", data_query]
    if pipeline is not None:
        cmd += ["-p", os.fspath(pipeline)]
    if compute_site is not None:
        cmd += ["--compute-site", compute_site]
    if config_overrides:
        cmd += ["--extra-qgraph-options", " ".join(f"-c {c}" for c in config_overrides)]
    return cmd


def bps_environment(
    workdir: str | os.PathLike[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the environment for running ``bps submit`` in ``workdir``.

    Parameters
    ----------
    workdir : path-like
        Directory the command runs in (pass it as ``cwd`` too): the submit
        directory ``submit/<output run>`` and Parsl's ``runinfo/`` go there.
    base : mapping, optional
        Environment to start from (default `os.environ`).

    Returns
    -------
    env : `dict` [`str`, `str`]
        ``base`` with ``PWD`` set to ``workdir`` (BPS's ``submitPath`` is
        ``${PWD}/submit/...``, and a child process's ``PWD`` is inherited,
        not set by ``cwd``), this Python environment's scripts first on
        ``PATH`` (the jobs run ``pipetask`` and ``butler`` from ``PATH``) and
        ``MEAS_CROWDSOURCE_DIR`` set to the package root if it is not set
        (the submit files name the pipelines through it).
    """
    env = dict(os.environ if base is None else base)
    env["PWD"] = os.fspath(Path(workdir).resolve())
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")]).rstrip(os.pathsep)
    env.setdefault("MEAS_CROWDSOURCE_DIR", str(config_dir().parent))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def output_run(butler, output: str) -> str:
    """Return the RUN collection that a ``bps submit -o output`` wrote to.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Butler on the repository.
    output : `str`
        The CHAINED output collection.

    Returns
    -------
    run : `str`
        Its first child, the newest ``<output>/<timestamp>`` run.

    Raises
    ------
    LookupError
        Raised if ``output`` is not a CHAINED collection whose first child
        is a RUN collection under it.
    """
    info = butler.collections.get_info(output)
    children = list(info.children)
    if info.type.name != "CHAINED" or not children or not children[0].startswith(output + "/"):
        raise LookupError(
            f"{output!r} is not the CHAINED output of a bps run (children {children})"
        )
    return children[0]


def _read_stat(pid: int) -> tuple[int, int, float] | None:
    """Session ID, RSS (bytes) and CPU time (user + system, s) of a process, or `None` if
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return int(fields[3]), int(statm.split()[1]) * _PAGE_SIZE, cpu


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def session_processes(session: int) -> dict[int, tuple[str, int, float]]:
    """Return the live (not zombie) processes of a session.

    Parameters
    ----------
    session : `int`
        Session ID: the PID of a process started with
        ``start_new_session=True``.

    Returns
    -------
    processes : `dict` [`int`, `tuple` [`str`, `int`, `float`]]
        Command line, resident set size (bytes) and CPU time so far (user +
        system, seconds) of each process, by PID.
    """
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _read_stat(pid)
        if stat is not None and stat[0] == session:
            found[pid] = (_cmdline(pid), stat[1], stat[2])
    return found


def terminate_session(session: int, grace: float = 5.0, timeout: float = 10.0) -> dict[int, str]:
    """Terminate what is left of a session: SIGTERM, then SIGKILL after ``timeout``.

    Parameters
    ----------
    session : `int`
        Session ID of a command this process started (and waited for).
    grace : `float`, optional
        Seconds to let the session's processes exit on their own first (a
        Parsl worker pool told to stop may take a moment).
    timeout : `float`, optional
        Seconds to wait after SIGTERM before SIGKILL.

    Returns
    -------
    leftovers : `dict` [`int`, `str`]
        Command lines of the processes still running after ``grace``.
    """
    deadline = time.monotonic() + grace
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: cmd for pid, (cmd, *_) in session_processes(session).items()}
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


class SessionMonitor:
    """Sample the processes of a session in a background thread.

    Parameters
    ----------
    session : `int`
        Session ID to watch.
    interval : `float`, optional
        Seconds between samples.

    Notes
    -----
    Use as a context manager around the wait for the command.  Memory is the
    resident set size read from ``/proc``: a process shorter than
    ``interval`` may be missed, and a peak between two samples too; the CPU
    time of a process is its last sampled value (up to ``interval`` short).
    """

    def __init__(self, session: int, interval: float = 0.5):
        self.session = session
        self.interval = interval
        self.commands: dict[int, str] = {}
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.samples: list[tuple[float, frozenset[int], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SessionMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            procs = session_processes(self.session)
            for pid, (cmd, rss, cpu) in procs.items():
                self.commands.setdefault(pid, cmd)
                self.peak_rss[pid] = max(rss, self.peak_rss.get(pid, 0))
                self.cpu[pid] = cpu
            total = sum(rss for _, rss, _ in procs.values())
            self.samples.append((time.monotonic() - t0, frozenset(procs), total))
            if self._stop.wait(self.interval):
                return

    def matching(self, predicate: Callable[[str], bool]) -> list[int]:
        """PIDs seen whose command line satisfies ``predicate``."""
        return [pid for pid, cmd in self.commands.items() if predicate(cmd)]

    def max_concurrent(self, predicate: Callable[[str], bool]) -> int:
        """Largest number of processes satisfying ``predicate`` seen in one sample."""
        wanted = set(self.matching(predicate))
        return max((len(pids & wanted) for _, pids, _ in self.samples), default=0)

    @property
    def peak_total_rss(self) -> int:
        """Largest sum of the RSS of the session's processes in one sample (bytes)."""
        return max((total for _, _, total in self.samples), default=0)

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every process seen, summed (seconds)."""
        return sum(self.cpu.values())

    def peak_single_rss(self, predicate: Callable[[str], bool]) -> int:
        """Largest RSS of one process satisfying ``predicate`` (bytes; 0 if none)."""
        return max((self.peak_rss[pid] for pid in self.matching(predicate)), default=0)


def run_in_session(
    cmd: Sequence[str],
    workdir: Path,
    log: Path,
    *,
    interval: float = 0.5,
    timeout: float | None = None,
) -> tuple[int, SessionMonitor, dict[int, str]]:
    """Run ``cmd`` in a new session under a `SessionMonitor`, output to ``log``.

    The command runs in ``workdir`` with `bps_environment`.  Whatever it
    leaves running in its session (Parsl's worker pool leaves the process
    tree) is terminated afterwards, in any case.

    Returns
    -------
    code, monitor, leftovers : `int`, `SessionMonitor`, `dict` [`int`, `str`]
        Exit status, the monitor (CPU time, peak memory, commands seen) and
        the processes that were still running (`terminate_session`).
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=workdir,
            env=bps_environment(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with SessionMonitor(proc.pid, interval=interval) as monitor:
                code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            leftovers = terminate_session(proc.pid)
    return code, monitor, leftovers
