"""kfac: K-FAC (Martens & Grosse 2015) and KFC (Grosse & Martens 2016) for PyTorch."""

from kfac.enums import FisherType, InverseStructure, LossFamily
from kfac.optimizer import KFAC
from kfac.settings import KFACSettings

__all__ = ["KFAC", "FisherType", "InverseStructure", "KFACSettings", "LossFamily"]
