"""`leanify doctor`: what is wrong with a model, measured, before optimizing it."""
