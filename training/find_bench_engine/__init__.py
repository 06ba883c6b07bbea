"""The FIND-Bench data engine behind ``python -m training.find_bench`` (see that module and
:mod:`.build`): writers, segment embeddings, the visual-replacement search, the resumable store."""
