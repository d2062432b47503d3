#!/usr/bin/env bash
# Multi-node GPU recipe for jaxpost: N nodes x G GPUs as one JAX runtime.
# Run with --help for the flags; --dry-run prints the commands instead of running them.
set -euo pipefail

prog=tpu/gpu_multinode.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  cat <<'EOF'
Usage: tpu/gpu_multinode.sh --nodes N --config FILE[:VARIANT] --workdir DIR
                            (--coordinator HOST[:PORT] [--node-id I] | --hosts H0,H1,... | --slurm)
                            [options] [--config.KEY=VALUE ...] [-- --config.KEY=VALUE ...]

Every process runs `python -m jaxpost.main ... --config.distributed.initialize=True`.

Explicit mode (one process per node, each driving all G local GPUs): node i runs with
  --config.distributed.coordinator_address=HOST:PORT  --config.distributed.num_processes=N
  --config.distributed.process_id=i  and  CUDA_VISIBLE_DEVICES=0,...,G-1
which jaxpost passes to jax.distributed.initialize(). (Of the matching environment
variables JAX reads only JAX_COORDINATOR_ADDRESS; there is no JAX_NUM_PROCESSES or
JAX_PROCESS_ID, so the count and the id go in as config values.)
The coordinator is node 0's address; PORT (default 1234) must be reachable from every node.
  (no --hosts / --node-id)  print the N per-node commands; run line i on node i
  --node-id I               run node I's command here (start it on every node)
  --hosts H0,H1,...         run node i's command on host Hi over ssh, all at once, and wait
                            (coordinator defaults to H0:1234)

SLURM mode (--slurm): submits one batch job with G tasks per node (one process per GPU);
JAX's SLURM auto-detection reads SLURM_NTASKS / SLURM_PROCID / SLURM_LOCALID /
SLURM_STEP_NODELIST in each `srun` task, picks the first node as coordinator and gives task
SLURM_LOCALID the GPU of that index (so GPUs must not be bound per task).

Options:
  --nodes N              number of nodes (default with --hosts: the number of hosts)
  --gpus-per-node G      GPUs per node (default 8)
  --config FILE[:V]      config file relative to the repository root
  --workdir DIR          output directory on a filesystem every node shares (or gs://...)
  --config.KEY=VALUE     config override, passed through (also accepted after --)
  --coordinator H[:P]    node 0's address as the other nodes reach it
  --node-id I            see above
  --hosts LIST           see above
  --slurm                see above
  --partition P          SLURM partition     --time T   SLURM time limit (e.g. 04:00:00)
  --job-name NAME        SLURM job name (default jaxpost)
  --dir DIR              repository checkout on the nodes (default: this checkout's path)
  --python PATH          interpreter, relative to --dir or absolute (default .venv/bin/python)
  --log-dir DIR          per-process logs, relative to --dir (default logs)
  --tag TAG              log file name stem (default: the last component of --workdir)
  --dry-run              print the commands, one per line, without running them
  -h, --help             this text

Examples:
  tpu/gpu_multinode.sh --nodes 2 --coordinator 10.0.0.1 --config configs/sft.py:qwen2.5-0.5b \
    --workdir /shared/runs/sft --config.mesh.fsdp=16
  tpu/gpu_multinode.sh --slurm --nodes 4 --gpus-per-node 8 --partition gpu \
    --config configs/sft.py:qwen2.5-0.5b --workdir /shared/runs/sft4
EOF
}

root=$(cd "$(dirname "$0")/.." && pwd)
nodes="" gpus=8 config="" workdir="" coordinator="" node_id="" hosts_csv="" slurm=0
partition="" time_limit="" job_name="jaxpost" dir="$root" python=".venv/bin/python"
log_dir="logs" tag=""
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
    --slurm) slurm=1 ;;
    --nodes) need_value "$@"; nodes=$2; shift ;;
    --gpus-per-node) need_value "$@"; gpus=$2; shift ;;
    --config) need_value "$@"; config=$2; shift ;;
    --workdir) need_value "$@"; workdir=$2; shift ;;
    --coordinator) need_value "$@"; coordinator=$2; shift ;;
    --node-id) need_value "$@"; node_id=$2; shift ;;
    --hosts) need_value "$@"; hosts_csv=$2; shift ;;
    --partition) need_value "$@"; partition=$2; shift ;;
    --time) need_value "$@"; time_limit=$2; shift ;;
    --job-name) need_value "$@"; job_name=$2; shift ;;
    --dir) need_value "$@"; dir=$2; shift ;;
    --python) need_value "$@"; python=$2; shift ;;
    --log-dir) need_value "$@"; log_dir=$2; shift ;;
    --tag) need_value "$@"; tag=$2; shift ;;
    *) die "unknown argument: $1" ;;
  esac
  shift
done

hosts=()
if [[ -n "$hosts_csv" ]]; then
  IFS=, read -r -a hosts <<<"$hosts_csv"
  [[ -n "$nodes" ]] || nodes=${#hosts[@]}
fi
[[ -n "$nodes" ]] || die "--nodes is required"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$gpus'"
[[ -n "$config" ]] || die "--config is required (e.g. configs/sft.py:qwen2.5-0.5b)"
[[ -n "$workdir" ]] || die "--workdir is required"
[[ -f "$root/${config%%:*}" ]] || die "--config: no file ${config%%:*} in $root"
check_overrides "${overrides[@]}"
if [[ -z "$tag" ]]; then
  tag=${workdir%/}
  tag=${tag##*/}
fi
for v in "$tag" "$log_dir" "$job_name"; do
  [[ "$v" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]] || die "bad name '$v' for --tag/--log-dir/--job-name"
done

main=(--config="$config" --workdir="$workdir" --config.distributed.initialize=True)

if ((slurm)); then
  [[ -z "$coordinator$node_id$hosts_csv" ]] \
    || die "--slurm picks the coordinator and process ids itself; drop --coordinator/--node-id/--hosts"
  step=$(quote srun --kill-on-bad-exit=1 --output="$log_dir/%x-%j.%t.log" \
    "$python" -m jaxpost.main "${main[@]}" "${overrides[@]}")
  sbatch=(sbatch --job-name="$job_name" --nodes="$nodes" --ntasks-per-node="$gpus"
    --gpus-per-node="$gpus" --chdir="$dir" --output="$log_dir/%x-%j.out")
  [[ -n "$partition" ]] && sbatch+=(--partition="$partition")
  [[ -n "$time_limit" ]] && sbatch+=(--time="$time_limit")
  need_command sbatch "run this on a SLURM login node"
  run mkdir -p "$dir/$log_dir"
  run "${sbatch[@]}" --wrap="$step"
  exit 0
fi

if ((${#hosts[@]})); then
  ((${#hosts[@]} == nodes)) || die "--hosts lists ${#hosts[@]} hosts but --nodes is $nodes"
  for h in "${hosts[@]}"; do
    [[ "$h" =~ ^[A-Za-z0-9_.@-]+$ ]] || die "bad host '$h' in --hosts"
  done
  coordinator=${coordinator:-${hosts[0]#*@}}
fi
[[ -n "$coordinator" ]] || die "--coordinator is required (node 0's address), or use --hosts / --slurm"
[[ "$coordinator" == *:* ]] || coordinator="$coordinator:1234"
[[ "$coordinator" =~ ^[A-Za-z0-9_.-]+:[0-9]+$ ]] || die "bad --coordinator '$coordinator' (HOST[:PORT])"
if [[ -n "$node_id" ]]; then
  if ! [[ "$node_id" =~ ^(0|[1-9][0-9]*)$ ]] || ((node_id >= nodes)); then
    die "--node-id must be in 0..$((nodes - 1)), got '$node_id'"
  fi
  ((${#hosts[@]} == 0)) || die "--node-id and --hosts exclude each other"
fi

visible=$(seq -s, 0 $((gpus - 1)))
# Node i's command line, as it would be typed on node i.
node_command() {
  local i=$1
  printf 'set -o pipefail; cd %s && mkdir -p %s && %s 2>&1 | tee %s\n' \
    "$(quote "$dir")" "$(quote "$log_dir")" \
    "$(quote env CUDA_VISIBLE_DEVICES="$visible" "$python" -m jaxpost.main "${main[@]}" \
      --config.distributed.coordinator_address="$coordinator" \
      --config.distributed.num_processes="$nodes" --config.distributed.process_id="$i" \
      "${overrides[@]}")" \
    "$(quote "$log_dir/$tag.node-$i.log")"
}

if [[ -n "$node_id" ]]; then
  cmd=$(node_command "$node_id")
  if ((dry_run)); then printf '%s\n' "$cmd"; else exec bash -c "$cmd"; fi
elif ((${#hosts[@]})); then
  pids=()
  for ((i = 0; i < nodes; i++)); do
    cmd=$(node_command "$i")
    if ((dry_run)); then
      quote ssh "${hosts[i]}" "$cmd"
    else
      # shellcheck disable=SC2029  # cmd is already quoted for the remote shell
      ssh "${hosts[i]}" "$cmd" &
      pids+=($!)
    fi
  done
  status=0
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  exit "$status"
else
  ((dry_run)) || printf '%s: run line i on node i (0-based), all at about the same time:\n' \
    "$prog" >&2
  for ((i = 0; i < nodes; i++)); do
    node_command "$i"
  done
fi
