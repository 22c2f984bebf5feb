"""R-Sparse: training-free rank-aware activation sparsity (sparse channels through W, the rest
through a rank-r SVD of W)."""

from fmlab.rsparse.sparse import (
    PROTOCOLS,
    RSparseLinear,
    budget,
    calibrate,
    rsparse_modules,
    set_protocol,
    sparsify,
)

__all__ = [
    "PROTOCOLS",
    "RSparseLinear",
    "budget",
    "calibrate",
    "rsparse_modules",
    "set_protocol",
    "sparsify",
]
