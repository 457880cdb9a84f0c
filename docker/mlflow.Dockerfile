# The MLflow tracking server (PostgreSQL store, basic authentication) and the stack's secrets tool.
# Build from the repository root: docker build -f docker/mlflow.Dockerfile -t ltkd-mlflow .
FROM python:3.11-slim
# psycopg 3: the driver SQLAlchemy 2.x reads the compose file's bare postgresql:// as (the project's
# `postgres` extra, same pin), also used by mlflow_serve.py for the password rotation.
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9"
# The server runs as `mlflow` (uid 1001); its own secrets folder and stores belong to it (a new named
# volume takes the owner of the folder it is mounted on).
RUN groupadd --gid 1001 mlflow && useradd --uid 1001 --gid 1001 --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlflow/artifacts /mlflow/auth /run/ltkd/mlflow \
    && chown -R mlflow:mlflow /mlflow /run/ltkd/mlflow && chmod 0700 /run/ltkd/mlflow
COPY docker/basic_auth.ini /etc/mlflow/basic_auth.ini
COPY docker/ltkd_secrets.py docker/mlflow_serve.py /opt/ltkd-mlflow/
USER mlflow
ENTRYPOINT ["python", "/opt/ltkd-mlflow/mlflow_serve.py"]
