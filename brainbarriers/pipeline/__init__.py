from .core import (
    FINAL_OUTPUTS,
    SEQUENCES,
    CancelToken,
    PipelineRun,
    ProgressEvent,
    Step,
    StepContext,
)
from .registry import all_steps, plan

__all__ = [
    "FINAL_OUTPUTS", "SEQUENCES", "CancelToken", "PipelineRun", "ProgressEvent", "Step",
    "StepContext", "all_steps", "plan",
]
