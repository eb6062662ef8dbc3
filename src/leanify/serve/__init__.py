"""`leanify serve` and `leanify loadtest`: the model behind an HTTP server, and the load that
shows whether the server or the model is the bottleneck.

model.py   the served model: tokenizer, runner with the measured settings, one batch -> rows
batcher.py dynamic batching behind a bounded queue, inference on one thread off the event loop
chat.py    chat completions for causal LMs: continuous batching (OpenVINO GenAI) or one at a
           time (torch), incremental text, request checks
app.py     the FastAPI app: OpenAI-shaped endpoints, limits, auth, health, Prometheus metrics
loadtest.py open-loop Poisson load at a ramp of rates, and the highest rate within a p95 budget
ray_serve.py the same service as a Ray Serve deployment
"""

# what `leanify serve` serves, by the task a run was optimized for, and how
SERVABLE_TASKS = {"embedding-similarity": "dynamic batching",
                  "text-classification": "dynamic batching",
                  "perplexity": "chat completions, continuous batching"}
