"""One module per FIND task: how its prompts and queries are built and how its outputs are decoded."""
