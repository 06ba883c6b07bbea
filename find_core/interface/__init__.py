"""The FIND interface: queries and prompts, per-task attention tables, layers and heads."""
