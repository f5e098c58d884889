"""Each stage ``reproduce.py`` runs gets a process of its own, forked from a parent that has already imported the
heavy libraries: a stage then starts in a fraction of a second instead of spending seconds re-importing torch and
transformers (twenty stages run per pipeline), and a crash or a kill still takes only its own process. Where there
is no ``fork`` (Windows), or with ``FEATURE_INTEGRATION_SUBPROCESS=1``, a stage is a plain fresh interpreter. A stage
that splits by rank, with ``--nproc N``, runs under torchrun, which starts its N processes itself.

The parent must not have run a parallel torch op before it forks: the OpenMP thread pool does not survive a fork,
and the child hangs on its first parallel op. reproduce.py and study.py fork from a fresh command-line process that
only imports; a caller that has computed (a test process) starts them as their own process, or sets the variable."""
from __future__ import annotations

import importlib
import logging
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

from common.seams import subprocess_requested

log = logging.getLogger(__name__)
# What the stages import that costs seconds; importing it once in the parent leaves the forked stage nothing to do.
PRELOAD = ("torch", "numpy", "scipy.stats", "sklearn.mixture", "safetensors.torch", "tqdm.auto",
           "transformers", "transformers.models.llama.modeling_llama", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto", "transformers.generation.utils",
           "statsmodels.formula.api", "statsmodels.stats.anova", "matplotlib.figure",
           "matplotlib.backends.backend_agg")


def forking() -> bool:
    return hasattr(os, "fork") and not subprocess_requested()


def preload() -> None:
    """Import the stages' heavy libraries in this (parent) process; nothing of them runs, so no thread pool or device
    context exists yet when a stage is forked."""
    if not forking():
        return
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional extra: the stage that needs it will say so itself
            log.debug("could not preload %s", name)


def run_script(script: Path, argv: list[str], env: dict[str, str]) -> int:
    """Run ``script argv`` as ``__main__`` in a child process with ``env`` added; returns its exit code."""
    if not forking():
        return subprocess.run([sys.executable, str(script), *argv], cwd=script.parent,
                              env={**os.environ, **env}).returncode
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the stage: never returns into the caller
        code = 1
        try:
            os.environ.update(env)
            sys.argv = [str(script), *argv]
            runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is not None and not isinstance(stop.code, int):  # sys.exit("text"), as the interpreter does
                print(stop.code, file=sys.stderr)
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # a bug in the stage: its traceback, as a fresh interpreter would print it
            traceback.print_exc()
        finally:
            from common.store.lock import release_all

            release_all()  # the locks this stage still holds (os._exit runs no atexit handler)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_torchrun(script: Path, argv: list[str], env: dict[str, str], nproc: int) -> int:
    """Run ``script argv`` as ``nproc`` ranks on this node under torchrun (its own launcher and rendezvous, never one of
    ours); returns torchrun's exit code, non-zero when any rank failed (torchrun's report names it on stderr)."""
    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *argv]
    return subprocess.run(command, cwd=script.parent, env={**os.environ, **env}).returncode
