"""RPC plumbing every service shares: proto conversions, server start-up, stream dispatch, batching."""
