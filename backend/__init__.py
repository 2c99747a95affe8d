"""kfac-lab backend: the FastAPI service and (in backend.store) the experiment store.

Importing this package imports neither FastAPI nor torch.
"""
