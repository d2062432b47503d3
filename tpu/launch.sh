#!/usr/bin/env bash
# Runs one jaxpost training job on every host of a TPU VM (multi-host: all hosts at once).
# Run with --help for the flags; --dry-run prints the command instead of running it.
set -euo pipefail

prog=tpu/launch.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: tpu/launch.sh --name NAME --zone ZONE --config FILE[:VARIANT] --workdir DIR
                     [options] [--config.KEY=VALUE ...] [-- --config.KEY=VALUE ...]

Starts `python -m jaxpost.main` on every worker of the TPU (gcloud ... ssh --worker=all)
with --config.distributed.initialize=True, so the hosts join one JAX runtime (on Cloud TPU
jax.distributed.initialize() finds its peers by itself). Each host writes its output to
DIR/LOG_DIR/TAG.<hostname>.log on that host (and, unless --detach, also streams it here).

Options:
  --name NAME          TPU name (as given to tpu/create.sh)
  --zone ZONE          its zone
  --project PROJECT    GCP project (default: gcloud's configured project)
  --config FILE[:V]    config file relative to the repository root, e.g. configs/sft.py:qwen2.5-0.5b
  --workdir DIR        output directory; use gs://BUCKET/PATH on multi-host slices (checkpoints
                       are written by all hosts together and must land in one shared place)
  --config.KEY=VALUE   config override, passed through (also accepted after --)
  --tag TAG            log file name stem (default: the last component of --workdir)
  --dir DIR            checkout on the workers, relative to $HOME (default: jaxpost)
  --log-dir DIR        log directory relative to --dir (default: logs)
  --detach             start in the background (nohup) and return; logs only on the hosts
  --dry-run            print the command, one per line, without running it
  -h, --help           this text

Examples:
  tpu/launch.sh --name jaxpost-v5e --zone us-west4-a --config configs/sft.py:qwen2.5-0.5b \
    --workdir gs://my-bucket/runs/sft-qwen --config.mesh.fsdp=8
  tpu/launch.sh --name jaxpost-v4 --zone us-central2-b --config configs/sft.py:qwen2.5-0.5b \
    --workdir gs://my-bucket/runs/v4 --detach -- --config.optim.lr=2e-5
EOF
}

name="" zone="" project="" config="" workdir="" tag="" dir="jaxpost" log_dir="logs" detach=0
overrides=()
while (($#)); do
  case "$1" in
    --) shift; overrides+=("$@"); break ;;
    --config.*=*) overrides+=("$1"); shift; continue ;;
    --config.*) need_value "$@"; overrides+=("$1=$2"); shift 2; continue ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
  esac
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --detach) detach=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --tag) need_value "$@"; tag=$2; shift ;;
    --dir) need_value "$@"; dir=$2; shift ;;
    --log-dir) need_value "$@"; log_dir=$2; shift ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
[[ -n "$config" ]] || die "--config is required (e.g. configs/sft.py:qwen2.5-0.5b)"
[[ -n "$workdir" ]] || die "--workdir is required (e.g. gs://BUCKET/runs/NAME)"
[[ "$name" =~ ^[a-z]([-a-z0-9]{0,60}[a-z0-9])?$ ]] || die "bad --name '$name'"
[[ "$zone" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "bad --zone '$zone' (e.g. us-west4-a)"
root=$(cd "$(dirname "$0")/.." && pwd)
config_file=${config%%:*}
[[ -f "$root/$config_file" ]] || die "--config: no file $config_file in $root"
check_overrides "${overrides[@]}"
if [[ "$workdir" != gs://* ]]; then
  printf '%s: warning: --workdir %s is local to each host; %s\n' "$prog" "$workdir" \
    "a multi-host slice needs a shared gs:// path for its checkpoints" >&2
fi
if [[ -z "$tag" ]]; then
  tag=${workdir%/}
  tag=${tag##*/}
fi
# These go into the remote command unquoted (the log path must expand $(hostname) there).
for v in "$tag" "$dir" "$log_dir"; do
  [[ "$v" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]] || die "bad name '$v' for --tag/--dir/--log-dir"
done
need_command gcloud "install the Google Cloud CLI"

main=$(quote .venv/bin/python -m jaxpost.main --config="$config" --workdir="$workdir" \
  --config.distributed.initialize=True "${overrides[@]}")
log="$log_dir/$tag.\$(hostname).log"
if ((detach)); then
  remote="cd $dir && mkdir -p $log_dir && nohup $main > $log 2>&1 < /dev/null &"
else
  remote="set -o pipefail; cd $dir && mkdir -p $log_dir && $main 2>&1 | tee $log"
fi

target=(--zone="$zone" --worker=all)
[[ -n "$project" ]] && target+=(--project="$project")
run gcloud compute tpus tpu-vm ssh "$name" "${target[@]}" --command="$remote"
