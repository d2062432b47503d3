#!/usr/bin/env bash
# Installs jaxpost (git checkout + Python venv + jax[tpu]) on every worker of a TPU VM.
# Run with --help for the flags; --dry-run prints the commands instead of running them.
set -euo pipefail

prog=tpu/setup.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: tpu/setup.sh --name NAME --zone ZONE [--repo URL] [options]

On every worker (gcloud ... ssh --worker=all): installs Python 3.11 if missing, checks out
the repository at --ref into --dir, creates DIR/.venv and runs pip install -e '.[tpu]'.
Re-running updates the checkout and the install in place.

Options:
  --name NAME        TPU name (as given to tpu/create.sh)
  --zone ZONE        its zone
  --project PROJECT  GCP project (default: gcloud's configured project)
  --repo URL         git URL every worker can clone (default: this checkout's 'origin')
  --ref REF          branch, tag or commit to check out (default: main)
  --local            ship this checkout's committed HEAD (git archive + scp) instead of
                     cloning; for repositories the workers cannot reach
  --dir DIR          checkout directory on the workers, relative to $HOME (default: jaxpost)
  --python PYTHON    interpreter for the venv (default: python3.11; installed with apt
                     when missing, as on the Ubuntu 22.04 TPU images)
  --dry-run          print the commands, one per line, without running them
  -h, --help         this text

Examples:
  tpu/setup.sh --name jaxpost-v5e --zone us-west4-a --repo https://github.com/ORG/jaxpost.git
  tpu/setup.sh --name jaxpost-v4 --zone us-central2-b --local
EOF
}

name="" zone="" project="" repo="" ref="main" local_copy=0 dir="jaxpost" python="python3.11"
while (($#)); do
  if [[ "$1" == --*=* ]]; then
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --local) local_copy=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    --repo) need_value "$@"; repo=$2; shift ;;
    --ref) need_value "$@"; ref=$2; shift ;;
    --dir) need_value "$@"; dir=$2; shift ;;
    --python) need_value "$@"; python=$2; shift ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
[[ "$name" =~ ^[a-z]([-a-z0-9]{0,60}[a-z0-9])?$ ]] || die "bad --name '$name'"
[[ "$zone" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "bad --zone '$zone' (e.g. us-west4-a)"
# These go into the remote shell command unquoted, so only plain names are allowed.
[[ "$dir" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]] || die "bad --dir '$dir' (a path relative to \$HOME)"
[[ "$ref" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]] || die "bad --ref '$ref'"
[[ "$python" =~ ^python3\.[0-9]+$ ]] || die "bad --python '$python' (e.g. python3.11)"
if ((local_copy)); then
  [[ -z "$repo" ]] || die "--local and --repo exclude each other"
else
  if [[ -z "$repo" ]]; then
    repo=$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null) \
      || die "--repo is required (this checkout has no 'origin' remote); or use --local"
  fi
  [[ "$repo" =~ ^[A-Za-z0-9_@:/.+~-]+$ ]] || die "bad --repo '$repo'"
fi
need_command gcloud "install the Google Cloud CLI"

target=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && target+=(--project="$project")

# One remote command line per step; each runs on all workers in parallel.
py_install="command -v $python >/dev/null || { sudo apt-get update -q"
py_install+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $python $python-venv; }"
venv="cd $dir && { [ -x .venv/bin/python ] || $python -m venv .venv; }"
venv+=" && .venv/bin/pip install -q -U pip && .venv/bin/pip install -e \".[tpu]\""
venv+=" && .venv/bin/python -c \"import jax, jaxpost; print(jax.__version__)\""

if ((local_copy)); then
  root=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel 2>/dev/null) \
    || die "--local needs to run inside a git checkout"
  archive="/tmp/jaxpost-$name.tar.gz"
  run git -C "$root" archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$name:jaxpost-src.tar.gz" "${target[@]}"
  fetch="mkdir -p $dir && tar -xzf jaxpost-src.tar.gz -C $dir && rm jaxpost-src.tar.gz"
else
  # fetch by ref (not clone --branch) so commit hashes work as well as branches and tags.
  fetch="{ [ -d $dir/.git ] || git clone -q $repo $dir; } && git -C $dir fetch -q origin $ref"
  fetch+=" && git -C $dir checkout -q --detach FETCH_HEAD"
fi

run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$py_install"
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$fetch"
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$venv"
