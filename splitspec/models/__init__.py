"""Model runners over a KV cache: the native Llama family with paging, and a transformers fallback."""
