"""ParamΔ: transfer post-training to an updated base by weight arithmetic, with no training.

Θ_ParamΔ = Θ'_base + α·(Θ_post − Θ_base), streamed tensor by tensor over HF checkpoints.
"""

from fmlab.param_delta.delta import (
    DeltaPlan,
    ParamDeltaError,
    Term,
    merge_state_dicts,
    merge_terms,
    param_delta,
    param_delta_state_dict,
    plan,
    plan_terms,
)
from fmlab.param_delta.diagnose import diagnose

__all__ = [
    "DeltaPlan",
    "ParamDeltaError",
    "Term",
    "diagnose",
    "merge_state_dicts",
    "merge_terms",
    "param_delta",
    "param_delta_state_dict",
    "plan",
    "plan_terms",
]
