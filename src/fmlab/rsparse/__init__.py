"""R-Sparse: training-free rank-aware activation sparsity (sparse channels through W, the rest
through a rank-r SVD of W), with TEAL-style and CATS-style baselines, recipe searches and a
batch-1 decode kernel."""

from fmlab.rsparse.cats import calibrate_cats, cats_sparsify, set_cats_protocol
from fmlab.rsparse.recipe import (
    Recipe,
    evolutionary_search,
    model_sparsity,
    module_params,
    teal_greedy,
)
from fmlab.rsparse.sparse import (
    PROTOCOLS,
    RSparseLinear,
    budget,
    calibrate,
    rsparse_modules,
    set_max_kernel_batch,
    set_protocol,
    sparsify,
)
from fmlab.rsparse.store import load_sparse, save_sparse

__all__ = [
    "PROTOCOLS",
    "RSparseLinear",
    "Recipe",
    "budget",
    "calibrate",
    "calibrate_cats",
    "cats_sparsify",
    "evolutionary_search",
    "load_sparse",
    "model_sparsity",
    "module_params",
    "rsparse_modules",
    "save_sparse",
    "set_cats_protocol",
    "set_max_kernel_batch",
    "set_protocol",
    "sparsify",
    "teal_greedy",
]
