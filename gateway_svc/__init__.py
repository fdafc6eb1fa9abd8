"""Gateway: the client-facing streaming API and the per-request propose -> verify loop."""
