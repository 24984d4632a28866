"""One router per concern: TGI, OpenAI, system routes (health, info, metrics) and the playground page."""
