#!/usr/bin/env bash
# Submit one sglr-ray experiment to a token-authenticated Ray cluster with `ray job submit`.
# `cluster/submit.sh --help` explains; cluster/README.md has the security model.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: cluster/submit.sh [--dry-run] [--pip] [--] [sglr-ray run flags...]

Runs `python -m sglr_ray run <flags>` as a Ray job: this repository is uploaded as the job's
working_dir (without .venv, .git, results, out, caches), so the driver and every actor import the
code as it is here.

  --dry-run   print the command instead of running it (no token or `ray` needed)
  --pip       also install the project's runtime dependencies (pyproject.toml, minus Ray) in a
              per-job virtualenv on every node. Off by default: the cluster's image or setup
              commands (cluster/ray-cluster.yaml) already have them, and installing torch for
              every job costs minutes and gigabytes.
  -h, --help  this text

Environment:
  RAY_DASHBOARD     job API address (default http://127.0.0.1:8265: `ray dashboard
                    cluster/ray-cluster.yaml` or `kubectl port-forward` makes the head's reachable there)
  RAY_AUTH_TOKEN    the cluster's token; else the file RAY_AUTH_TOKEN_PATH names, else
                    ~/.ray/auth_token. RAY_AUTH_MODE=token is set here: Ray clients send no token
                    without it.
  SGLR_OUT          --out for the run, a path on the head (default /tmp/sglr-ray/out; a relative path
                    would land in the job's temporary copy of the repository), or a URI every node
                    reaches (s3://bucket/x?endpoint_override=host:9000&scheme=http). An --out among
                    the flags wins.
  SGLR_TORCH_INDEX  extra pip index for torch with --pip (default: CPU-only wheels,
                    https://download.pytorch.org/whl/cpu; empty for PyPI only)
  RAY, PYTHON       the `ray` and `python3` to run (default: the ones on PATH)

Example:
  cluster/submit.sh --method sglr --clients 20 --epochs 5 --executor ray
EOF
}

dry_run=0
with_pip=0
while (($# > 0)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --pip) with_pip=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *) break ;;
  esac
  shift
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
address="${RAY_DASHBOARD:-http://127.0.0.1:8265}"
out="${SGLR_OUT:-/tmp/sglr-ray/out}"
torch_index="${SGLR_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
ray_bin="${RAY:-ray}"
python_bin="${PYTHON:-python3}"

# The runtime_env as JSON, built by Python so that nothing needs shell quoting.
runtime_env_json="$(
  "$python_bin" - "$repo_root/pyproject.toml" "$with_pip" "$torch_index" <<'PY'
import json
import re
import sys

pyproject, with_pip, torch_index = sys.argv[1:]
env = {"excludes": [".venv", ".git", "results", "out", "**/__pycache__", ".pytest_cache", ".ruff_cache",
                    "*.egg-info"]}
if with_pip == "1":
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(pyproject, "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    # Ray itself stays the cluster's: a job cannot swap the Ray version under a running cluster.
    packages = [d for d in deps if re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0].lower() != "ray"]
    options = ["--disable-pip-version-check", "--no-cache-dir"]
    if torch_index:
        options.append(f"--extra-index-url={torch_index}")
    env["pip"] = {"packages": packages, "pip_install_options": options}
print(json.dumps(env))
PY
)"

command=(
  "$ray_bin" job submit
  --address "$address"
  --working-dir "$repo_root"
  --runtime-env-json "$runtime_env_json"
  --
  python -m sglr_ray run --out "$out" "$@"
)

export RAY_AUTH_MODE=token
if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
  token_source="RAY_AUTH_TOKEN"
else
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  token_source="$token_file"
  if [[ -s "$token_file" ]]; then
    RAY_AUTH_TOKEN="$(<"$token_file")"
    export RAY_AUTH_TOKEN
    unset RAY_AUTH_TOKEN_PATH
  elif ((dry_run == 0)); then
    echo "submit.sh: no token: set RAY_AUTH_TOKEN, or put the cluster's token in $token_file" \
      "(\`ray get-auth-token --generate\` creates one; cluster/README.md says where it must go)" >&2
    exit 2
  else
    token_source="(none found: $token_file is missing or empty)"
  fi
fi

if ((dry_run == 1)); then
  # Quote only what needs it, so the line stays readable and can be pasted into a shell.
  line="RAY_AUTH_MODE=token"
  for arg in "${command[@]}"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      line+=" $arg"
    else
      line+=" ${arg@Q}"
    fi
  done
  echo "# token: $token_source"
  echo "$line"
  exit 0
fi

if ! command -v "$ray_bin" >/dev/null 2>&1; then
  echo "submit.sh: \`$ray_bin\` not found: install Ray (the cluster's version) or set RAY=/path/to/ray" >&2
  exit 2
fi
exec "${command[@]}"
