"""Benchmarks of find_ros: small modules, one figure family each, run by ``python -m bench.run``.

Every module exposes ``run(config: BenchConfig) -> Section``. Figures are printed and written to
``bench/RESULTS.md`` / ``bench/results.json``; nothing here passes or fails. Each figure carries the
absolute numbers and a ratio against a baseline measured in the same run on the same machine, so
figures from different machines (or a loaded one) can still be compared by their ratios.

Modules: ``models`` (task latency, interface vs encoder), ``node`` (ROS node overhead), ``transport``
(embedding images over DDS), ``fusion`` (3D feature fusion and map queries), ``album`` (interleave
retrieval over large galleries), ``training`` (images/s, 1 vs 2 torchrun processes), ``field_nerf``
(nerfstudio find-field training iterations on the CPU).
"""
