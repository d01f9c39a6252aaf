"""Ticking sensors as the Dagster daemon does, in one process, for tests and benchmarks.

The daemon evaluates a sensor once its ``minimum_interval_seconds`` have passed since its last
tick, keeps the cursor the tick returned, drops a run request whose run key the sensor already
used, and launches the rest. ``SensorTicker`` does the same on a Dagster instance, running each
launched run in process (a deployment runs it in its own process; the run's work is the same).
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class Tick:
    """What one sensor tick asked for and which runs it launched."""

    sensor: str
    requests: list[dg.RunRequest]
    skip_message: str | None
    runs: list[dg.ExecuteInProcessResult] = field(default_factory=list)


class SensorTicker:
    """The daemon's sensor loop over ``definitions``.

    Args:
        definitions: The code location.
        instance: The Dagster instance that holds runs, run keys and cursors' history.
        resources: What the sensors and the runs are bound to.
        clock: Seconds (monotonic), for the sensors' intervals.
    """

    def __init__(
        self,
        definitions: dg.Definitions,
        instance: dg.DagsterInstance,
        resources: Mapping[str, object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.definitions = definitions
        self.instance = instance
        self.resources = dict(resources)
        self.clock = clock
        self.cursors: dict[str, str | None] = {}
        self._last_tick: dict[str, float] = {}
        self._run_keys: dict[str, set[str]] = {}

    def due(self, sensor: str) -> bool:
        """Whether ``sensor``'s interval has passed since its last tick."""
        last = self._last_tick.get(sensor)
        interval = self.definitions.resolve_sensor_def(sensor).minimum_interval_seconds or 30
        return last is None or self.clock() - last >= interval

    def tick(self, sensor: str) -> Tick:
        """Evaluate ``sensor`` now and launch the runs it asks for (new run keys only).

        Raises:
            RuntimeError: A launched run failed.
        """
        definition = self.definitions.resolve_sensor_def(sensor)
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor),
            definitions=self.definitions,
            resources=self.resources,
        )
        data = definition.evaluate_tick(context)
        self._last_tick[sensor] = self.clock()
        if data.cursor is not None:
            self.cursors[sensor] = data.cursor
        used = self._run_keys.setdefault(sensor, set())
        requests = [r for r in data.run_requests or [] if r.run_key not in used]
        tick = Tick(sensor, list(data.run_requests or []), data.skip_message)
        for request in requests:
            if request.run_key is not None:
                used.add(request.run_key)
            tick.runs.append(self._launch(definition, request))
        return tick

    def tick_due(self, sensors: list[str]) -> list[Tick]:
        """One pass of the daemon's loop: every sensor of ``sensors`` whose interval passed."""
        return [self.tick(s) for s in sensors if self.due(s)]

    def _launch(
        self, sensor: dg.SensorDefinition, request: dg.RunRequest
    ) -> dg.ExecuteInProcessResult:
        job = self.definitions.resolve_job_def(str(request.job_name or sensor.job_name))
        result = job.execute_in_process(
            instance=self.instance,
            resources=self.resources,
            partition_key=request.partition_key,
            tags={**request.tags, "dagster/sensor_name": sensor.name},
            raise_on_error=False,
        )
        if not result.success:
            failures = [
                f"{e.step_key}: {e.step_failure_data.error.message.splitlines()[0]}"
                for e in result.all_events
                if e.is_step_failure and e.step_failure_data.error
            ]
            raise RuntimeError(f"{job.name} run {request.run_key} failed: {failures}")
        return result
