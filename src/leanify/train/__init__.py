"""Knowledge distillation: train a smaller student to match the original model."""
