"""Entry points that compose the core and the services: `LLM`, the CLI, the gateway client, bench and
train-speculator. Nothing below this layer imports them."""
