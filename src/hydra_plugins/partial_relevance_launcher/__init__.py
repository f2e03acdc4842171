"""Hydra's submitit launchers, saying what they submitted (`launcher=local|slurm`).

hydra-submitit-launcher logs the sweep directory and each job's overrides, then waits for the
results in silence: a SLURM sweep gives no job id to `squeue`/`scancel` and no log file to
`tail -f`. These subclasses log, as soon as the jobs are submitted, one line per job: its
index, its submitit/SLURM job id and its stdout and stderr files. Everything else is the
plugin's own behaviour. (Hydra only loads launchers from the `hydra_plugins` namespace, hence
this package; without the `sweep` extra it defines nothing.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


def report_submitted(jobs: Sequence[Any], first_index: int = 0) -> list[str]:
    """One line per submitted submitit job: `#<index> job <id>: stdout <path>, stderr <path>`."""
    lines = []
    for index, job in enumerate(jobs, first_index):
        lines.append(
            f"#{index} submitted as job {job.job_id}: stdout {job.paths.stdout}, "
            f"stderr {job.paths.stderr}"
        )
    for line in lines:
        log.info(line)
    return lines


try:
    import submitit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        LocalLauncher as _LocalLauncher,
    )
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SlurmLauncher,
    )
except ImportError:  # the `sweep` extra is not installed: no submitit launchers at all
    pass
else:

    @contextmanager
    def _reporting(first_index: int) -> Iterator[None]:
        """While the plugin's `launch` runs, its `executor.map_array` also reports the jobs."""
        original = submitit.AutoExecutor.map_array

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[Any]:
            jobs = original(executor, fn, *iterables)
            report_submitted(jobs, first_index)
            return jobs

        submitit.AutoExecutor.map_array = map_array  # type: ignore[method-assign]
        try:
            yield
        finally:
            submitit.AutoExecutor.map_array = original  # type: ignore[method-assign]

    class LocalLauncher(_LocalLauncher):
        """`launcher=local`: submitit's local processes, each job's id and logs reported."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            with _reporting(initial_job_idx):
                return super().launch(job_overrides, initial_job_idx)

    class SlurmLauncher(_SlurmLauncher):
        """`launcher=slurm`: SLURM jobs, each job's id and logs reported at submission."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            with _reporting(initial_job_idx):
                return super().launch(job_overrides, initial_job_idx)
