"""`leanify serve` and `leanify loadtest`: the model behind an HTTP server, and the load that
shows whether the server or the model is the bottleneck.

model.py   the served model: tokenizer, runner with the measured settings, one batch -> rows
batcher.py dynamic batching behind a bounded queue, inference on one thread off the event loop
app.py     the FastAPI app: OpenAI-shaped endpoints, limits, auth, health, Prometheus metrics
loadtest.py open-loop Poisson load at a ramp of rates, and the highest rate within a p95 budget
"""
