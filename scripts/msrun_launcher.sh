#!/bin/bash
# Launch a distributed run the way MindFormers' scripts/msrun_launcher.sh does, on torchrun.
#
# Usage (MindFormers' forms; spec §10.2):
#   bash scripts/msrun_launcher.sh "<python script + args>"                      # 8 workers on this machine
#   bash scripts/msrun_launcher.sh "<cmd>" WORKER_NUM
#   bash scripts/msrun_launcher.sh "<cmd>" WORKER_NUM MASTER_PORT LOG_DIR JOIN CLUSTER_TIME_OUT
#   bash scripts/msrun_launcher.sh "<cmd>" WORKER_NUM LOCAL_WORKER MASTER_ADDR MASTER_PORT NODE_RANK \
#        LOG_DIR JOIN CLUSTER_TIME_OUT                                          # one call per machine
# Defaults: WORKER_NUM=8 LOCAL_WORKER=8 MASTER_ADDR=127.0.0.1 MASTER_PORT=8118 NODE_RANK=0
#           LOG_DIR=output/msrun_log JOIN=False CLUSTER_TIME_OUT=7200
# e.g. bash scripts/msrun_launcher.sh "run_mindformer.py --config x.yaml --use_parallel True" 2
#
# Each rank's output goes to LOG_DIR/worker_<global rank>.log. JOIN=False starts the run in the
# background and returns (follow it with `tail -f LOG_DIR/worker_0.log`); JOIN=True waits for it and
# returns its exit status. torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; RANK_ID and DEVICE_ID are
# exported too, as msrun does. CLUSTER_TIME_OUT (seconds) bounds the wait for all machines to join.
# The Python interpreter is $PYTHON (default: python).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="${ROOT_DIR}${PYTHONPATH:+:${PYTHONPATH}}"
export LOG_MF_PATH="${PWD}/output/log${MF_LOG_SUFFIX:-}"
PYTHON=${PYTHON:-python}

usage() {
  sed -n '4,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then usage; fi
CMD=$1
WORKER_NUM=8; LOCAL_WORKER=8; MASTER_ADDR=127.0.0.1; MASTER_PORT=8118; NODE_RANK=0
LOG_DIR=output/msrun_log; JOIN=False; CLUSTER_TIME_OUT=7200
case $# in
  1) ;;
  2) WORKER_NUM=$2; LOCAL_WORKER=$2 ;;
  6) WORKER_NUM=$2; LOCAL_WORKER=$2; MASTER_PORT=$3; LOG_DIR=$4; JOIN=$5; CLUSTER_TIME_OUT=$6 ;;
  9) WORKER_NUM=$2; LOCAL_WORKER=$3; MASTER_ADDR=$4; MASTER_PORT=$5; NODE_RANK=$6; LOG_DIR=$7; JOIN=$8
     CLUSTER_TIME_OUT=$9 ;;
  *) echo "msrun_launcher.sh: expected 1, 2, 6 or 9 arguments, got $#" >&2; usage ;;
esac

for pair in "WORKER_NUM=$WORKER_NUM" "LOCAL_WORKER=$LOCAL_WORKER" "MASTER_PORT=$MASTER_PORT" \
            "NODE_RANK=$NODE_RANK" "CLUSTER_TIME_OUT=$CLUSTER_TIME_OUT"; do
  if ! [[ ${pair#*=} =~ ^[0-9]+$ ]]; then
    echo "msrun_launcher.sh: ${pair%%=*} must be a whole number, got '${pair#*=}'" >&2; exit 2
  fi
done
if [ "$WORKER_NUM" -eq 1 ]; then
  echo "msrun_launcher.sh: WORKER_NUM is 1; run a single process directly: $PYTHON $CMD" >&2; exit 2
fi
if [ "$LOCAL_WORKER" -lt 1 ] || [ $((WORKER_NUM % LOCAL_WORKER)) -ne 0 ]; then
  echo "msrun_launcher.sh: WORKER_NUM ($WORKER_NUM) must be a multiple of LOCAL_WORKER ($LOCAL_WORKER)" >&2; exit 2
fi
case ${JOIN,,} in true|false) ;; *) echo "msrun_launcher.sh: JOIN must be True or False, got '$JOIN'" >&2; exit 2 ;; esac
NNODES=$((WORKER_NUM / LOCAL_WORKER))
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)

# the command runs under `python` unless it already names an interpreter
read -r -a WORDS <<< "$CMD"
if [[ ${WORDS[0]} == *python* ]]; then RUN=$CMD; else RUN="$PYTHON $CMD"; fi

# each rank: msrun's environment names, then the command with its output in worker_<rank>.log
WORKER="export RANK_ID=\$RANK DEVICE_ID=\$LOCAL_RANK; exec $RUN > \"$LOG_DIR/worker_\$RANK.log\" 2>&1"

LAUNCH=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$LOCAL_WORKER"
        --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
        --rdzv_conf "join_timeout=$CLUSTER_TIME_OUT" --no_python bash -c "$WORKER")
echo "msrun_launcher.sh: $WORKER_NUM workers ($LOCAL_WORKER on node $NODE_RANK of $NNODES), logs in $LOG_DIR"
if [ "${JOIN,,}" = "true" ]; then
  "${LAUNCH[@]}" > "$LOG_DIR/scheduler.log" 2>&1
else
  nohup "${LAUNCH[@]}" > "$LOG_DIR/scheduler.log" 2>&1 &
  echo "msrun_launcher.sh: started (pid $!); follow with: tail -f $LOG_DIR/worker_0.log"
fi
