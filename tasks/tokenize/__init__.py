"""Pre-tokenization on Ray: dataset shards x a tokenizer version x a clip shape -> token shards.

`config` (TokenizeConfig) is light to import; `run.tokenize_dataset` orchestrates; `output`
plans, publishes and commits token shards through the sharded-output protocol; `scheduler`
runs the Ray actor pool and pipeline; `workers` holds what runs on Ray; `format` reads and writes
token shards; `report` the summary and MLflow logging; `steps` the Prefect task.
"""
