"""From a derivation to kernel modules: the plan, its lowering, one printer per backend, the stamp, the store."""
