"""The four-stage pipeline end to end: config validation, the stage walk, evaluation, the report
and the memory planner. Stages themselves live in `reasoner.stages`."""

from reasoner.pipeline.config_check import resolve_stages, validate_config
from reasoner.pipeline.evaluate import evaluate
from reasoner.pipeline.run import Pipeline, run_pipeline

__all__ = ["Pipeline", "evaluate", "resolve_stages", "run_pipeline", "validate_config"]
