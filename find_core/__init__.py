"""find_core: the FIND model (an interface over frozen foundation models) as a PyTorch library.

`FindPipeline` is the one inference API; nothing in this package imports ROS. Heavy modules (torch,
transformers) load only when `FindPipeline` is first touched, so light users (data readers, the
instruction parser, replay) start fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .instructions import Entity, Instruction, InstructionError, VisualReference, parse_instruction
    from .pipeline import FindPipeline
    from .prompts import ClassPrompt, SpatialPrompt

# numpy and PIL (instructions) load on first use too, so find_core.embedded stays standard-library only
# (the launch process reads the embedded checkpoint's input size from it)
_LAZY = {"FindPipeline": "pipeline", "ClassPrompt": "prompts", "SpatialPrompt": "prompts",
         **{name: "instructions" for name in ("Entity", "Instruction", "InstructionError", "VisualReference",
                                              "parse_instruction")}}

__all__ = ["FindPipeline", "Instruction", "Entity", "VisualReference", "InstructionError", "parse_instruction",
           "ClassPrompt", "SpatialPrompt"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'find_core' has no attribute '{name}'")
