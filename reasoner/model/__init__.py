"""The decoder: config, parameters and the pure forward function."""

from reasoner.model.config import ModelConfig, PRESETS, get_config
from reasoner.model.decoder import (forward, init_cache, init_params, param_logical_axes,
                                    param_shapes)

__all__ = ["ModelConfig", "PRESETS", "get_config", "forward", "init_cache", "init_params",
           "param_logical_axes", "param_shapes"]
