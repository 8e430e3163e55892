"""The product's steps, in the order they run. Each capability package defines its ``STEP``."""

from __future__ import annotations

from ..errors import InputError
from .core import Step


def all_steps() -> list[Step]:
    # Imported here so that `brainbarriers --help` does not load torch and the networks.
    # The order is the run order: each step comes after the steps whose products it reads.
    from ..barriers.step import STEP as barriers
    from ..ctv.step import STEP as ctv
    from ..skullstrip.step import STEP as skullstrip
    from ..supervoxels.step import STEP as supervoxels
    from ..tumor.step import STEP as tumor

    return [skullstrip, tumor, supervoxels, barriers, ctv]


def plan(names: list[str] | None) -> list[Step]:
    """The steps to run for the names asked for, with the steps they depend on, in order."""
    steps = all_steps()
    by_name = {s.name: s for s in steps}
    if names is None:
        return steps
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(
            None, f"unknown step(s): {', '.join(unknown)} (known: {', '.join(by_name)})"
        )
    wanted = set(names)
    # Walk backwards so each step pulls in the producers of its required inputs.
    for step in reversed(steps):
        if step.name in wanted:
            for product in step.inputs:
                producer = next((s for s in steps if product in s.outputs + s.optional_outputs), None)
                if producer is not None:
                    wanted.add(producer.name)
    return [s for s in steps if s.name in wanted]
