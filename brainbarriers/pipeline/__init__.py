from .core import (
    COREGISTER,
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
    "COREGISTER", "FINAL_OUTPUTS", "SEQUENCES", "CancelToken", "PipelineRun", "ProgressEvent", "Step",
    "StepContext", "all_steps", "plan",
]
