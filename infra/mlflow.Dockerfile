# The MLflow tracking server and model registry: Postgres driver and S3 client added.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.0 psycopg2-binary boto3
