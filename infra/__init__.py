"""Local services stack and cluster manifests (not imported by flows/tasks/models at run time)."""
