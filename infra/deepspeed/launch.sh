#!/usr/bin/env bash
# Launch jobs/pretrain.py on NNODES nodes x GPUS_PER_NODE GPUs with DeepSpeed's own launcher.
#
#   infra/deepspeed/launch.sh --config configs/demo.yaml --shards /data/shards --out /data/run [key=value ...]
#
# Two ways to run it (environment variables, defaults in brackets):
#   ssh mode [NO_SSH=0]: run once, on node 0. `deepspeed` reads HOSTFILE and starts the ranks of
#     every node over passwordless ssh (pdsh). Needs the same image/venv and paths on all nodes.
#   no-ssh mode [NO_SSH=1]: run on every node with its NODE_RANK (SLURM's srun, a Kubernetes
#     Job/JobSet per node, or two shells for a local test). Each node starts its own local ranks
#     and they meet at MASTER_ADDR:MASTER_PORT. No ssh between nodes at all.
#
#   HOSTFILE        [infra/deepspeed/hostfile]  "host slots=N" lines; node order = node rank order
#   NNODES          [all hosts in HOSTFILE]     use the first NNODES hosts
#   GPUS_PER_NODE   [slots of each host]        processes per node (GPUs; CPU processes on CPU)
#   NODE_RANK       [0]                         this node (no-ssh mode)
#   MASTER_ADDR     [first host in HOSTFILE]    rendezvous address of node 0
#   MASTER_PORT     [29500]                     rendezvous port (use a free one)
#   PRESET          []                          ds_zero2_bf16 | ds_zero3_offload | a JSON path:
#                                               DeepSpeed settings merged into the trainer's
#                                               config, with the matching train.* overrides
#   PYTHON          [python]                    interpreter for the JSON helper below
#   DEEPSPEED       [deepspeed]                 the launcher executable
#   DRY_RUN         [0]                         1: print the command instead of running it
#
# NCCL on multi-node GPU clusters usually wants the fabric named, e.g. NCCL_SOCKET_IFNAME=ib0 or
# eth0 and NCCL_IB_HCA=mlx5; DeepSpeed forwards variables listed in ~/.deepspeed_env (ssh mode)
# and inherits the environment (no-ssh mode).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

HOSTFILE=${HOSTFILE:-$HERE/hostfile}
NO_SSH=${NO_SSH:-0}
NODE_RANK=${NODE_RANK:-0}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
DEEPSPEED=${DEEPSPEED:-deepspeed}
PRESET=${PRESET:-}

[ -f "$HOSTFILE" ] || { echo "launch.sh: hostfile not found: $HOSTFILE" >&2; exit 2; }
# hosts in file order, comments and blank lines skipped
mapfile -t HOSTS < <(grep -vE '^\s*(#|$)' "$HOSTFILE" | awk '{print $1}')
[ "${#HOSTS[@]}" -gt 0 ] || { echo "launch.sh: no hosts in $HOSTFILE" >&2; exit 2; }
NNODES=${NNODES:-${#HOSTS[@]}}
if [ "$NNODES" -gt "${#HOSTS[@]}" ]; then
  echo "launch.sh: NNODES=$NNODES but $HOSTFILE lists ${#HOSTS[@]} hosts" >&2; exit 2
fi
if [ "$NODE_RANK" -ge "$NNODES" ]; then
  echo "launch.sh: NODE_RANK=$NODE_RANK must be < NNODES=$NNODES" >&2; exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-${HOSTS[0]}}

args=(--hostfile "$HOSTFILE" --num_nodes "$NNODES" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
[ -n "${GPUS_PER_NODE:-}" ] && args+=(--num_gpus "$GPUS_PER_NODE")
[ "$NO_SSH" = 1 ] && args+=(--no_ssh --node_rank "$NODE_RANK")

overrides=()
if [ -n "$PRESET" ]; then
  preset_file=$PRESET
  [ -f "$preset_file" ] || preset_file="$HERE/$PRESET.json"
  [ -f "$preset_file" ] || { echo "launch.sh: preset not found: $PRESET" >&2; exit 2; }
  # The preset is DeepSpeed JSON; the trainer takes it as train.ds_config (merged last) and must
  # agree on the stage/precision/offload it branches on, so those become train.* overrides too.
  mapfile -t overrides < <("$PYTHON" - "$preset_file" <<'PY'
import json, sys
cfg = {k: v for k, v in json.load(open(sys.argv[1])).items() if not k.startswith("_")}
zero = cfg.get("zero_optimization", {})
if "stage" in zero:
    print(f"train.zero_stage={zero['stage']}")
if cfg.get("bf16", {}).get("enabled"):
    print("train.precision=bf16")
elif cfg.get("fp16", {}).get("enabled"):
    print("train.precision=fp16")
if "offload_optimizer" in zero or "offload_param" in zero:
    print("train.offload=true")
print("train.ds_config=" + json.dumps(cfg, separators=(",", ":")))
PY
)
fi

cmd=("$DEEPSPEED" "${args[@]}" "$REPO/jobs/pretrain.py" "$@" "${overrides[@]}")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
cd "$REPO"
exec "${cmd[@]}"
