"""Drivers that train many things and cache what they measure: the results tables (`reproduce`),
pruning sweeps, curriculum comparisons. The only library code that may import `viz`."""
