"""The package executor: a Scaleout compute package's entry points, run as commands.

A compute package (``scaleout.yaml``, :mod:`flare_protocol.compute_package`) is run with
the command executor's contract (processes, process groups, environment, checks,
abort), with Scaleout's calling convention:

* ``startup`` once per job, before the first task: ``python data.py``;
* ``train`` per round: ``python train.py MODEL_IN MODEL_OUT``. ``MODEL_OUT`` ends in
  ``.npz``; the metadata JSON (a mandatory integer ``num_examples``) is read from
  ``MODEL_OUT-metadata``, where Scaleout's ``save_metadata(metadata, MODEL_OUT)`` writes it;
* ``validate`` per validation: ``python validate.py MODEL_IN VALIDATIONS_JSON``.

``python`` is the site's interpreter, or, when the package names a ``python_env``, the
interpreter of the virtualenv built for it (:mod:`flare_site.executors.python_env`) before the first
task. The environment's ``bin`` folder then comes first on user code's ``PATH`` and
``VIRTUAL_ENV`` names it, as an activated virtualenv would.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

from flare_protocol.compute_package import PackageExecutorConfig, PythonEnvSpec
from flare_protocol.errors import ExecutionError
from flare_site.executors.base import JobContext, MetricSink
from flare_site.executors.command import CommandExecutor
from flare_site.executors.process import OutputSink, safe_base_env
from flare_site.executors.python_env import PythonEnv, PythonEnvs

__all__ = ["PackageExecutor"]


class PackageExecutor(CommandExecutor):
    """Runs a compute package's ``startup``/``train``/``validate`` entry points."""

    # Scaleout's helpers write the training metadata beside the model: <model_out>-metadata.
    metadata_suffix = ".npz-metadata"

    def __init__(
        self,
        config: PackageExecutorConfig,
        ctx: JobContext,
        *,
        python_envs: PythonEnvs | None = None,
        on_metric: MetricSink | None = None,
        on_output: OutputSink | None = None,
    ) -> None:
        super().__init__(config.as_commands(), ctx, on_metric=on_metric, on_output=on_output)
        self.package = config
        self.python_envs = python_envs
        #: The job's virtualenv once :meth:`start` has it (None without python_env).
        self.python_env: PythonEnv | None = None
        self._stop_waiting = asyncio.Event()

    async def start(self) -> None:
        await self._activate()
        await super().start()

    async def build(self) -> None:
        """Run the package's ``build`` entry point (the seed model) in its environment, as
        ``flare job run build`` does; sites never run it.

        Raises:
            ExecutionError: the package has no ``build``, or it failed.
        """
        words = self.package.entry("build")
        if words is None:
            raise ExecutionError(f"{self.package.path} has no 'build' entry point")
        await self._activate()
        await self._run("build", words, {}, "build command")

    async def _activate(self) -> None:
        """Build or find the job's python_env (once) and run later commands in it."""
        spec = self.package.python_env
        if spec is None or self.python_env is not None:
            return
        env = self.python_env = await self._environment(spec)
        self.ctx = replace(self.ctx, python=str(env.python))
        path = safe_base_env(self.ctx.base_env, self.ctx.run_as).get("PATH", os.defpath)
        activated = {"VIRTUAL_ENV": str(env.path), "PATH": f"{env.bin_dir}{os.pathsep}{path}"}
        self.config = replace(self.config, env={**self.config.env, **activated})

    async def _environment(self, spec: PythonEnvSpec) -> PythonEnv:
        if self.python_envs is None:
            raise ExecutionError(
                f"{self.package.path} names python_env {spec.path!r}, but no place to build "
                "Python environments was given"
            )
        building = asyncio.ensure_future(self.python_envs.ensure(spec, on_output=self.on_output))
        stopped = asyncio.ensure_future(self._stop_waiting.wait())
        try:
            await asyncio.wait({building, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not building.done():
                building.cancel()  # stops our wait; the build itself goes on
        if not building.done() or building.cancelled():
            raise ExecutionError(
                f"the job was aborted while the environment of {spec.path} was being built",
                aborted=True,
            )
        return building.result()

    async def abort(self) -> None:
        self._stop_waiting.set()
        await super().abort()
