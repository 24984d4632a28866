"""One router per concern: TGI, OpenAI, and system routes (health, info, metrics)."""
