"""The MLflow model registry: candidate versions, the challenger and champion aliases, promotion and rollback."""
