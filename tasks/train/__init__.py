"""Training jobs: the tokenizer on Ray Train (checkpoints, data sharding, MLflow logging, registry)."""
