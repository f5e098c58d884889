"""Statistics of trained weights (METHOD §6, §7, §10): decoder geometry, orthogonality, squared-norm bimodality, the
NFM's weight rows."""
