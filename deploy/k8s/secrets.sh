#!/usr/bin/env bash
# Creates (or, run again, rotates) the two Kubernetes Secrets the Ray pods read; no value is written to
# a file or passed on a command line:
#   ltkd-ray-token   key auth_token: Ray's token (authOptions.secretName in raycluster.yaml / rayjob.yaml)
#   ltkd-mlflow      key credentials: ~/.mlflow/credentials of the MLflow user the sweep logs in as
#                    (a non-admin user with write access to experiments, e.g. the compose stack's `ltkd`)
# Usage: MLFLOW_USER=ltkd deploy/k8s/secrets.sh [--keep-token]
#   The MLflow password is read from the file $MLFLOW_PASSWORD_FILE, else from the terminal.
#   After a rotation, recreate the Ray pods (they read the token when they start).
set -euo pipefail
ns=${NAMESPACE:-default}
user=${MLFLOW_USER:-ltkd}

apply() {  # NAME KEY: the value on stdin
  kubectl -n "$ns" create secret generic "$1" --from-file="$2"=/dev/stdin --dry-run=client -o yaml |
    kubectl -n "$ns" apply -f -
}

if [ "${1:-}" != "--keep-token" ]; then
  python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(32))' | apply ltkd-ray-token auth_token
fi
if [ -n "${MLFLOW_PASSWORD_FILE:-}" ]; then
  password=$(cat -- "$MLFLOW_PASSWORD_FILE")
else
  read -rsp "MLflow password of user $user: " password
  echo
fi
printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' "$user" "$password" |
  apply ltkd-mlflow credentials
echo "secrets ltkd-ray-token and ltkd-mlflow are set in namespace $ns"
