"""Verifier: the target model runner, its paged KV cache, and lossless verification of drafts."""
