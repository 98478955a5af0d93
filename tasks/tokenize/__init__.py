"""Pre-tokenization on Ray: dataset shards x a tokenizer version x a clip shape -> token shards.

`config` (TokenizeConfig) is light to import; `run.tokenize_dataset` does the work, `format`
reads and writes token shards, `workers` holds what runs on Ray, `steps` the Prefect task.
"""
