"""kfac: K-FAC (Martens & Grosse 2015) and KFC (Grosse & Martens 2016) for PyTorch.

`kfac.KFAC` is loaded on first use, so that the torch-free modules (kfac.units, kfac.enums,
kfac.settings) can be imported without torch — the API process imports kfac.units.
"""

from kfac.enums import FisherType, InverseStructure, LossFamily
from kfac.settings import KFACSettings

__all__ = ["KFAC", "FisherType", "InverseStructure", "KFACSettings", "LossFamily"]


def __getattr__(name: str):
    if name == "KFAC":
        from kfac.optimizer import KFAC

        return KFAC
    raise AttributeError(f"module 'kfac' has no attribute {name!r}")
