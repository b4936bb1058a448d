"""Client shards and the server: plain torch, no Ray."""
