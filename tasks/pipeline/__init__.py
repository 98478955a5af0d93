"""The end-to-end pipeline's config, skip checks and summary (the flow is flows/pipeline.py)."""
