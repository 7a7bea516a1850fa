"""Simulators of physical systems: arrays in the kernels' layer, the physics, the ensembles.

- :mod:`.plate`: the heated plate of docs/twin.md (parameters, sources, sensors, one run);
- :mod:`.ensemble`: ``twinhpc simulate``: an ensemble on MPI ranks written as a dataset;
- :mod:`.stream`: a long sensor stream with injected faults, labelled, for ``twin monitor``.

No torch here; HDF5 is written through :mod:`twinhpc.data` and :mod:`twinhpc.io`.
"""
