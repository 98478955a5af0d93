"""arvid flows: the user-facing jobs (Prefect flows), the `arvid` CLI and deployments."""
