"""Video ingestion: probe, decode, filter, resample, clip, shard."""
