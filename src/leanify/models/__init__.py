"""Models: artifacts (a model at rest), loading, inputs and runners."""
