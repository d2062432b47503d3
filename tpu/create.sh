#!/usr/bin/env bash
# Creates a Cloud TPU VM for jaxpost, directly or as a queued resource.
# Run with --help for the flags; --dry-run prints the gcloud command instead of running it.
set -euo pipefail

prog=tpu/create.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: tpu/create.sh --name NAME --zone ZONE [options]

Creates a Cloud TPU VM (one host, or every host of a pod slice).

Options:
  --name NAME        TPU name (lowercase letters, digits, '-'; starts with a letter)
  --zone ZONE        zone, e.g. us-west4-a (v5e), us-central2-b (v4), europe-west4-a
  --type TYPE        accelerator type (default v5litepod-8), e.g. v4-32, v5p-8, v6e-8
  --runtime VERSION  TPU software version; default from the type:
                       v5litepod-* -> v2-alpha-tpuv5-lite   v5p-* -> v2-alpha-tpuv5
                       v6e-*       -> v2-alpha-tpuv6e       v2/v3/v4 -> tpu-ubuntu2204-base
  --project PROJECT  GCP project (default: gcloud's configured project)
  --queued           request a queued resource (waits in the queue for capacity) named
                     NAME-qr, whose TPU node is NAME
  --spot             Spot capacity (cheaper; may be preempted at any time)
  --dry-run          print the command, one per line, without running it
  -h, --help         this text

Examples:
  tpu/create.sh --name jaxpost-v5e --zone us-west4-a --type v5litepod-8
  tpu/create.sh --name jaxpost-v4 --zone us-central2-b --type v4-32 --queued --spot
EOF
}

name="" zone="" type="v5litepod-8" runtime="" project="" queued=0 spot=0
while (($#)); do
  if [[ "$1" == --*=* ]]; then
    set -- "${1%%=*}" "${1#*=}" "${@:2}"
  fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --queued) queued=1 ;;
    --spot) spot=1 ;;
    --name) need_value "$@"; name=$2; shift ;;
    --zone) need_value "$@"; zone=$2; shift ;;
    --type) need_value "$@"; type=$2; shift ;;
    --runtime) need_value "$@"; runtime=$2; shift ;;
    --project) need_value "$@"; project=$2; shift ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name is required"
[[ -n "$zone" ]] || die "--zone is required"
[[ "$name" =~ ^[a-z]([-a-z0-9]{0,60}[a-z0-9])?$ ]] \
  || die "bad --name '$name': lowercase letters, digits and '-', starting with a letter"
[[ "$zone" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "bad --zone '$zone' (e.g. us-west4-a)"
[[ "$type" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] || die "bad --type '$type' (e.g. v5litepod-8, v4-32)"

if [[ -z "$runtime" ]]; then
  case "$type" in
    v5litepod-*) runtime=v2-alpha-tpuv5-lite ;;
    v5p-*) runtime=v2-alpha-tpuv5 ;;
    v6e-*) runtime=v2-alpha-tpuv6e ;;
    v2-* | v3-* | v4-*) runtime=tpu-ubuntu2204-base ;;
    *) die "no default runtime for --type $type; pass --runtime" ;;
  esac
fi

common=(--zone="$zone" --accelerator-type="$type")
[[ -n "$project" ]] && common+=(--project="$project")
((spot)) && common+=(--spot)

need_command gcloud "install the Google Cloud CLI"

if ((queued)); then
  run gcloud compute tpus queued-resources create "$name-qr" --node-id="$name" \
    "${common[@]}" --runtime-version="$runtime"
  if ! ((dry_run)); then
    printf '%s: queued; watch it with:\n  gcloud compute tpus queued-resources describe %s --zone=%s\n' \
      "$prog" "$name-qr" "$zone" >&2
  fi
else
  run gcloud compute tpus tpu-vm create "$name" "${common[@]}" --version="$runtime"
fi
