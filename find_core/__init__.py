"""find_core: the FIND model (an interface over frozen foundation models) as a PyTorch library.

`FindPipeline` is the one inference API; nothing in this package imports ROS.
"""
from .instructions import Entity, Instruction, InstructionError, VisualReference, parse_instruction
from .pipeline import FindPipeline
from .prompts import ClassPrompt, SpatialPrompt

__all__ = ["FindPipeline", "Instruction", "Entity", "VisualReference", "InstructionError", "parse_instruction",
           "ClassPrompt", "SpatialPrompt"]
