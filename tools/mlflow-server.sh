#!/usr/bin/env bash
# Install the full mlflow package (its tracking server; mlflow-skinny has none) into its own environment
# .venv-mlflow, for the test of tracking.mlflow = http://... against a real server:
#   tools/mlflow-server.sh [PYTHON]
# The test environment is left alone (its torch and mlflow-skinny are not touched). Exit 0 when the server
# program is there. When the install fails because the package registry cannot be reached, the reason is
# written to .venv-mlflow.unavailable (the test skips and shows it) and the exit is 0; any other failure
# exits 1 with pip's output, so that `make test` stops instead of skipping the test.
set -u
python=${1:-python3}
venv=.venv-mlflow
version=3.17.2
marker=.venv-mlflow.unavailable
if [ -x "$venv/bin/mlflow" ] && "$venv/bin/python" -c "import mlflow.server, flask" 2>/dev/null; then
	rm -f "$marker"
	echo "mlflow server: $venv holds mlflow $("$venv/bin/python" -c 'import mlflow; print(mlflow.__version__)')"
	exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv" || { echo "error: $python -m venv $venv failed" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if "$venv/bin/pip" install -q "mlflow==$version" >"$log" 2>&1; then
	rm -f "$marker"
	echo "mlflow server: installed mlflow $version into $venv"
	exit 0
fi
# Failed: a registry that cannot be reached is a reason to skip; anything else is a defect to see.
if "$venv/bin/pip" index versions mlflow >/dev/null 2>&1; then
	cat "$log" >&2
	echo "error: the package registry answers, but mlflow==$version did not install into $venv (pip's output above)" >&2
	rm -rf "$venv"
	exit 1
fi
reason="the package registry could not be reached to install mlflow==$version into $venv ($(tail -n 1 "$log"))"
rm -rf "$venv"
echo "$reason" >"$marker"
echo "warning: $reason; the MLflow server test is skipped"
exit 0
