#!/usr/bin/env bash
# SLURM array job: task $SLURM_ARRAY_TASK_ID runs sweep point number $SLURM_ARRAY_TASK_ID of SWEEP_FILE
# (one line of lpt-train overrides per point; blank lines and '#' comments are skipped) with
# `srun --ntasks=<parallel.data × parallel.layers> lpt-train <overrides>`.
#
#   sbatch --array=0-3 --ntasks=8 scripts/slurm/array_job.sh scripts/slurm/weak_scaling.txt
#
# The allocation (--ntasks, --gpus-per-task, --time) must fit the largest point. LPT_DRY_RUN=1 prints the
# command instead of running it.
#SBATCH --job-name=lpt-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
sweep_file=${1:?usage: array_job.sh SWEEP_FILE}
task=${SLURM_ARRAY_TASK_ID:?not an array job: submit with sbatch --array=0-N}
mapfile -t points < <(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$sweep_file")
if (( task >= ${#points[@]} )); then
  echo "array_job.sh: no sweep point $task in $sweep_file (it has ${#points[@]}: use --array=0-$(( ${#points[@]} - 1 )))" >&2
  exit 2
fi
read -r -a overrides <<< "${points[$task]}"
data=1; layers=1
for o in "${overrides[@]}"; do
  case $o in parallel.data=*) data=${o#*=} ;; parallel.layers=*) layers=${o#*=} ;; esac
done
run_dir="runs/slurm/${SLURM_ARRAY_JOB_ID:-local}/${task}"
cmd=(srun --ntasks=$(( data * layers )) lpt-train "${overrides[@]}" "hydra.run.dir=$run_dir")
if [[ -n ${LPT_DRY_RUN:-} ]]; then
  echo "${cmd[@]}"
else
  exec "${cmd[@]}"
fi
