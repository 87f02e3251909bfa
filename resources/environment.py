"""Resources configured from the deployment's environment, in the open.

``configured(VnaResource, {"host": "VOXL_VNA_HOST", ...})`` gives each field ``EnvVar(variable)``
where that variable is set, so the UI's resource page names the variable and a run reads its
value when it starts (a secret is never shown), and otherwise the default the deployment chose,
which the page shows as a value. A field with neither stays ``EnvVar(variable)``: a run then fails
at launch naming the variable to set, rather than guessing.

Dagster's ``EnvVar`` carries text and whole numbers only, so a fractional setting (a rate, a
timeout) is read when the definitions load and shown as its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeVar

from dagster import EnvVar
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

R = TypeVar("R", bound=BaseModel)  # a ConfigurableResource or ConfigurableIOManager


class SettingError(ValueError):
    """An environment variable holds something its setting cannot take; names the variable."""


def _from_variable(name: str, annotation: Any) -> Any:
    if annotation in (int, "int"):
        return EnvVar.int(name)
    if annotation in (float, "float"):
        try:
            return float(os.environ[name])
        except ValueError:
            raise SettingError(
                f"{name} must be a number (seconds, or queries per second)"
            ) from None
    return EnvVar(name)


def configured(
    resource: type[R],
    variables: Mapping[str, str],
    **defaults: Any,
) -> R:
    """``resource`` with each field in ``variables`` taken from its environment variable where
    set, else from ``defaults``, else from the resource's own default, else left to the
    variable (required at launch).

    Raises:
        SettingError: a fractional setting's variable is not a number.
    """
    fields = resource.model_fields
    values: dict[str, Any] = {}
    for name, variable in variables.items():
        field = fields[name]
        if variable in os.environ:
            values[name] = _from_variable(variable, field.annotation)
        elif name in defaults:
            values[name] = defaults[name]
        elif field.default is not PydanticUndefined:
            values[name] = field.default  # given explicitly, so the UI shows it
        else:
            values[name] = EnvVar(variable)
    unknown = set(defaults) - set(variables)
    values.update({name: defaults[name] for name in unknown})
    return resource(**values)
