"""An example kfac-lab plugin: `specs` (what the API validates; no torch) and `train` (what
a worker builds; torch)."""
