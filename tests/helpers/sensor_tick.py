"""Tick a sensor (``new_extract_sensor`` by default) on a real Dagster test instance and collect
what it logged.

Also runnable as a program (``python -m tests.helpers.sensor_tick EXTRACTS PROJECTS DB_URL``),
which prints the tick's run requests and log lines as JSON: a test runs it as an unprivileged
user, where a folder without permissions is really unreadable (root reads everything).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from dagster import (
    DagsterInstance,
    SensorDefinition,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)

from resources.extracts import ExtractsFolderResource
from resources.voxl_database import ProjectRegistryResource, VoxlDatabaseResource
from sensors.extract_sensor import new_extract_sensor


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@dataclass
class Tick:
    result: SensorResult
    logs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def run_keys(self) -> list[str]:
        return sorted(str(r.run_key) for r in self.result.run_requests or [])

    @property
    def partition_keys(self) -> list[str]:
        return sorted(str(r.partition_key) for r in self.result.run_requests or [])

    @property
    def errors(self) -> list[str]:
        return [message for level, message in self.logs if level == "ERROR"]


def tick(
    instance: DagsterInstance,
    resources: Mapping[str, object],
    cursor: str | None,
    sensor: SensorDefinition = new_extract_sensor,
) -> Tick:
    """One evaluation of ``sensor`` (the extract sensor unless given); its partition requests
    are applied to the instance."""
    context = build_sensor_context(instance=instance, cursor=cursor, resources=dict(resources))
    handler = _Lines()
    context.log.addHandler(handler)
    result = sensor(context)
    assert isinstance(result, SensorResult)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(
            request.partitions_def_name, list(request.partition_keys or [])
        )
    return Tick(result, handler.lines)


def main() -> None:
    extracts, projects, database_url = sys.argv[1:4]
    resources = {
        "voxl_db": VoxlDatabaseResource(url=database_url),
        "projects": ProjectRegistryResource(directory=projects),
        "extracts": ExtractsFolderResource(directory=extracts, quiet_seconds=0),
    }
    with instance_for_test() as instance:
        first = tick(instance, resources, None)
        second = tick(instance, resources, first.result.cursor)
    print(
        json.dumps(
            {
                "partition_keys": first.partition_keys,
                "errors": first.errors,
                "second_tick_runs": second.partition_keys,
                "second_tick_errors": second.errors,
            }
        )
    )


if __name__ == "__main__":
    main()
