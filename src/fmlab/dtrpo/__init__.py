"""dTRPO: trajectory-reduced preference optimization for block-diffusion LMs."""
