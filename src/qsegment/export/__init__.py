"""Export targets (one module each; heavy imports stay inside the functions)."""
