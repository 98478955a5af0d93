"""Staged AR pretraining: stage configs, the batch plan over token shards, the trainer."""
