"""Running pipeline steps somewhere other than the local process: Kubernetes pods for Airflow (see pods.py)."""
