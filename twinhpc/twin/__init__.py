"""Using a trained twin: what-if rollouts against the simulator and live monitoring of a sensor
stream (``twinhpc twin rollout`` / ``twinhpc twin monitor``; docs/twin.md, "Using the twin").

- :mod:`.model`: a run's trained surrogate with the plate it was trained on (the simulator's
  table, the parameter names and trained ranges) and a one-step stepper in physical units;
- :mod:`.scenario`: a what-if scenario's parameters (defaults, held-out scenarios, overrides)
  and the out-of-range warnings;
- :mod:`.whatif`: the twin and the simulator on the same scenario: trajectories, timings,
  errors;
- :mod:`.monitor`: the twin kept in step with a sensor stream (gated optimal-interpolation
  nudging), residual features, calibration on fault-free data, alarms and their scores;
- :mod:`.plots`: the PNGs of both.

HDF5 is written through :mod:`twinhpc.io.twin` and read through :mod:`twinhpc.io.stream`.
"""
