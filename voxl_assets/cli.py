"""The `voxl` command: check project definitions, register extracts, report status.

Exit codes: 0 success, 1 the operation failed (e.g. a run failed), 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from voxl_assets import settings
from voxl_assets.project_config import ProjectConfigError, ProjectRegistry, project_files

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _error(message: str) -> None:
    print(f"voxl: error: {message}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    directory = Path(args.projects_dir) if args.projects_dir else settings.projects_dir()
    from voxl_assets.project_config import load_project

    failures = 0
    paths = list(project_files(directory))
    if not paths:
        _error(f"no project definitions (*.yaml) in {directory}")
        return EXIT_BAD_INPUT
    slugs: dict[str, Path] = {}
    for path in paths:
        try:
            project = load_project(path)
            _check_tag_operations(directory, path, project)
        except ProjectConfigError as exc:
            failures += 1
            print(str(exc), file=sys.stderr)
            continue
        if project.slug in slugs:
            failures += 1
            print(
                f"{path}: project.slug '{project.slug}' already defined in {slugs[project.slug]}",
                file=sys.stderr,
            )
            continue
        slugs[project.slug] = path
        print(f"ok  {path.name}: {project.slug} ({project.project.name})")
    if failures:
        _error(f"{failures} of {len(paths)} project definitions are invalid")
        return EXIT_BAD_INPUT
    print(f"{len(paths)} project definitions valid")
    return EXIT_OK


def _check_tag_operations(directory: Path, path: Path, project: object) -> None:
    """Validate the content of the tag-operation files too, when the de-id engine is present."""
    try:
        from voxl_assets.deid.tag_operations import validate_project_tag_operations
    except ImportError:  # the engine arrives with the anonymisation work
        return
    validate_project_tag_operations(directory, path, project)


def cmd_populate(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance, materialize

    from voxl_assets.cohort.extract_reader import ExtractError, read_any_summary
    from voxl_assets.cohort.ingest import register_extract
    from voxl_assets.dagster_home import ensure_dagster_home
    from voxl_assets.definitions import defs
    from voxl_assets.partitions import EXTRACTS

    path = Path(args.path).resolve()
    if not path.exists():
        _error(f"{path}: no such extract directory or CSV file")
        return EXIT_BAD_INPUT
    try:
        summary = read_any_summary(path)
        registry = ProjectRegistry.load()
    except (ExtractError, ProjectConfigError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    slug = summary.project_slug
    if slug not in registry:
        _error(
            f"project '{slug}' (from {path.name}) is not registered: add "
            f"project_definitions/{slug}.yaml by pull request first"
        )
        return EXIT_BAD_INPUT
    ensure_dagster_home()
    from resources.voxl_database import VoxlDatabaseResource

    database = VoxlDatabaseResource().database
    key = register_extract(database, summary, slug)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(EXTRACTS, [key])
    assets = [defs.get_assets_def("cohort_messages")]
    result = materialize(
        assets,
        instance=instance,
        partition_key=key,
        resources=defs.resources,
        raise_on_error=False,
        tags={"voxl/source": "cli-populate"},
    )
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        detail = (
            failure.step_failure_data.error.message.strip()
            if failure and failure.step_failure_data.error
            else ""
        )
        _error(f"cohort_messages failed for {key}: {detail}")
        return EXIT_FAILED
    materialization = result.asset_materializations_for_node("cohort_messages")[0]
    counts = {k: v.value for k, v in materialization.metadata.items() if k != "progress"}
    print(f"extract {key} (run {result.run_id})")
    for name, value in counts.items():
        print(f"  {name}: {value}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from resources.voxl_database import VoxlDatabaseResource
    from voxl_assets.status import extract_statuses, render_table

    statuses = extract_statuses(VoxlDatabaseResource().database, args.project)
    if args.project and not statuses:
        known = ProjectRegistry.load()
        if args.project not in known:
            _error(
                f"unknown project '{args.project}'; registered: {', '.join(known.slugs()) or 'none'}"
            )
            return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        print(render_table(statuses))
    return EXIT_OK


def cmd_schema(_args: argparse.Namespace) -> int:
    from voxl_assets.project_config import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxl", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate every project definition")
    check.add_argument("--projects-dir", help="default: VOXL_PROJECTS_DIR or project_definitions/")
    check.set_defaults(func=cmd_check_config)

    populate = sub.add_parser(
        "populate", help="register an extract and materialise its cohort messages"
    )
    populate.add_argument("path", help="an OMOP ES extract directory or an escape-hatch CSV file")
    populate.set_defaults(func=cmd_populate)

    status = sub.add_parser("status", help="studies per state for each extract")
    status.add_argument("project", nargs="?", help="only this project (slug)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    schema = sub.add_parser("schema", help="print the JSON schema of a project definition")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
