"""CostFilter-AD: features → base (initial map, templates) → matching cost volume → 3D filtering
network guided by the features and the initial map → blend with the base map (:func:`.model.blend`)."""

from ..base import Method
from .fit import fit_costfilter, teach_costfilter
from .model import CostFilterModel

METHOD = Method("costfilter", CostFilterModel, fit=fit_costfilter, trains=True, teach=teach_costfilter)

__all__ = ["METHOD", "CostFilterModel"]
