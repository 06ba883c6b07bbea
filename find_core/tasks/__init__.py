"""One module per task: how its prompts and queries are built and decoded, and its training spec
(attention-table rows, default loss weights, reader, batch, loss). `registry` lists them; importing
this package loads it, so every task's attention table is known once any task module is used."""
from . import registry  # noqa: F401  (binds the interface's tables and the default loss weights)
