"""Checkpoints (per-step training state), model directories and Hugging Face interop."""

from reasoner.checkpoint.hf_io import export_hf, import_hf
from reasoner.checkpoint.model_dir import load_model, read_model_config, save_model
from reasoner.checkpoint.orbax_checkpoint import CheckpointManager
from reasoner.checkpoint.vocab import grow_vocab

__all__ = ["CheckpointManager", "export_hf", "grow_vocab", "import_hf", "load_model",
           "read_model_config", "save_model"]
