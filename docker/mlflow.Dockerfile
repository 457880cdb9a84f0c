# MLflow tracking server with PostgreSQL support and basic authentication.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary
