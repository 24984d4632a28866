"""What runs in an engine process: one model's continuous batching (scheduling in `engine`, the
running batch in `batch`, per-sequence bookkeeping in `sequences`, stop strings in `stopping`) and
the process that serves it to the front ends (`process`). Nothing here imports HTTP code."""
