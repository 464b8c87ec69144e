"""Ray as the distributed engine of ``csc synthesize --executor ray``.

The driver (the ``csc synthesize`` process) plans the grid, skips what the run folder already
holds and splits the rest round-robin into shards, one Ray task per shard. Each task builds its
own RoleCS program and LM clients on its worker from the run's recipe (configuration, profiles,
LM settings: model names, addresses and the *names* of key variables, never a key: workers read
keys from their own environment) and yields every dialogue as it finishes. The driver writes
them to the run folder as they stream in, with the resume rules of every run: a dialogue whose
key is already written is not written again, so a task Ray re-runs after its worker died adds
nothing twice, and a shard whose task fails for good leaves its remaining dialogues missing, for
the next run of the same command to do.

``pip install "dspy-csc[ray]"`` installs Ray.
"""

from __future__ import annotations

import contextvars
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

INSTALL_HINT = 'the Ray executor needs Ray: pip install "dspy-csc[ray]" (or pip install ray)'
# Ray re-runs a task whose worker died this many times; the driver drops re-delivered dialogues.
TASK_RETRIES = 2
# Test hook: "AFTER" makes the worker of shard 0 exit (as if killed) after AFTER dialogues.
FAULT_ENV = "CSC_RAY_FAULT_EXIT_AFTER"


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be started or reached."""


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(INSTALL_HINT) from None
    return ray


def synthesize_shard(recipe: dict[str, Any], items: list[tuple[Any, ...]], threads: int):
    """Run one shard's dialogues on this worker; yields ``(key, (outcome, record))`` as each
    finishes. ``recipe`` rebuilds the run (see :func:`ray_outcomes`)."""
    import dspy

    from csc.data.profiles import CustomerProfile
    from csc.framework import Framework
    from csc.lm import LMSettings, lm_for_role
    from csc.programs.synthesis import GridItem, SynthesisConfig, SynthesisRun
    from csc.throughput import memoize_model_metadata, reuse_type_adapters, without_response_cache

    config = SynthesisConfig.model_validate(recipe["config"])
    framework = Framework.from_dict(recipe["framework"])
    profiles = {p["id"]: CustomerProfile.model_validate(p) for p in recipe["profiles"]}
    settings = LMSettings.model_validate(recipe["lm_settings"])
    memoize_model_metadata()
    reuse_type_adapters()
    cache: dict = {}
    lms = {r: lm_for_role(settings, r, cache, connections=threads) for r in recipe["roles"]}
    for lm in lms.values():
        without_response_cache(lm)
    program = None
    if recipe.get("program") is not None:
        # The compiled agents travel as their file's bytes (a worker may be another machine).
        import tempfile

        program = Path(tempfile.mkdtemp(prefix="csc-ray-program-")) / "program.json"
        program.write_bytes(recipe["program"])
    # The worker only calls synthesize(); the run folder is the driver's (no path here).
    run = SynthesisRun(
        "/nonexistent", config, framework, list(profiles.values()), lms=lms, program=program
    )
    topics = {(t.code, t.name): t for t in config.topics}
    grid = [
        GridItem(topics[(code, name)], profiles[profile_id], replica, key)
        for code, name, profile_id, replica, key in items
    ]
    exit_after = int(os.environ.get(FAULT_ENV, "0") or 0) if recipe["shard"] == 0 else 0
    yielded = 0
    with (
        dspy.context(disable_history=True, trace=None),
        ThreadPoolExecutor(max(1, threads)) as pool,
    ):
        # Each call in a copy of this context, so the settings above reach the pool's threads.
        futures = {
            pool.submit(contextvars.copy_context().run, run.synthesize, item): item.key
            for item in grid
        }
        for future in as_completed(futures):
            yield futures[future], future.result()
            yielded += 1
            if exit_after and yielded >= exit_after:
                os._exit(1)  # a worker killed mid-shard (the fault-injection test)


def ray_outcomes(
    recipe: dict[str, Any],
    *,
    address: str | None = None,
    tasks: int | None = None,
) -> Any:
    """An ``outcomes`` callable for :meth:`SynthesisRun.run` that runs on Ray.

    ``recipe``: ``config`` (the SynthesisConfig as JSON), ``framework`` (its dict),
    ``profiles``, ``lm_settings`` (:class:`~csc.lm.LMSettings` as JSON, no keys) and ``roles``.
    ``address``: an existing cluster (``ray start --head`` prints it); None starts a local one
    for the length of the run. ``tasks``: shards (default: the cluster's CPUs).
    """
    ray = import_ray()

    def outcomes(todo: Sequence[Any], concurrency: int) -> Iterator[tuple[Any, Any]]:
        if not todo:
            return
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            except Exception as exc:  # ConnectionError, a bad address, a temp-dir problem, ...
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                raise RayUnavailableError(
                    f"cannot start or reach {where}: {exc}; check --ray-address (`ray status` "
                    "on the head node prints it) or RAY_TMPDIR"
                ) from None
        try:
            yield from _stream(ray, recipe, todo, concurrency, tasks)
        finally:
            if started:
                ray.shutdown()

    return outcomes


def _stream(
    ray: Any, recipe: dict[str, Any], todo: Sequence[Any], concurrency: int, tasks: int | None
):
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = max(1, min(len(todo), tasks or cpus))
    threads = max(1, -(-concurrency // n))  # the run's concurrency, spread over the tasks
    remote = ray.remote(max_retries=TASK_RETRIES, num_cpus=1)(synthesize_shard)
    by_key = {item.key: item for item in todo}
    pending = {}
    for shard in range(n):
        # Grid items travel as (topic code, topic name, profile id, replica, key).
        items = [
            (it.topic.code, it.topic.name, it.profile.id, it.replica, it.key)
            for it in todo[shard::n]
        ]
        pending[remote.remote({**recipe, "shard": shard}, items, threads)] = shard
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        generator = ready[0]
        try:
            key, result = ray.get(next(generator))
        except StopIteration:
            del pending[generator]
            continue
        except ray.exceptions.RayError as exc:  # the task failed for good (retries spent)
            shard = pending.pop(generator)
            warnings.warn(
                f"Ray shard {shard} of {n} stopped ({type(exc).__name__}); its unfinished "
                "dialogues are missing: re-run the same command to do them",
                stacklevel=2,
            )
            continue
        yield by_key[key], result
