"""The HTTP service: model directories -> registry -> batching engine -> HTTP."""
