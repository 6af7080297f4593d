"""indistill_lab: pruning, layer-alignment, curriculum and distillation primitives for the course notebooks."""
__version__ = "0.1.0"
