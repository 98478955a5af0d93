"""Reading ingested datasets: manifests, shards, clips as tensors."""
