"""The settings the CLI and the bench share (kept in a module without heavy imports, so
``fmlab dtrpo --help`` stays fast)."""

# lr and β: the best validation setting of the dtrpo sweep (docs/results/dtrpo/sweep.json);
# lr 5e-4 / β 0.1 collapsed dTRPO below the reference. The bench now tunes every arm on the
# validation split (fmlab dtrpo bench) and records what it chose.
DEFAULTS: dict = {
    "lr": 1e-4,
    "beta": 2.0,
    "steps": 120,
    "batch_size": 16,
    "warmup_steps": 10,
    "weight_decay": 0.0,
}
