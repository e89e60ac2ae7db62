# Job launchers used by w2p.sh (Kaldi/ESPnet convention).
#   run.pl   : local parallel jobs (default)
#   slurm.pl : Slurm job arrays via sbatch --wait (set SLURM_EXTRA_OPTS for partitions etc.)
cmd_backend=${cmd_backend:-local}
if [ "${cmd_backend}" = local ]; then
  export cmd="run.pl"
  export train_cmd="run.pl"
  export decode_cmd="run.pl"
elif [ "${cmd_backend}" = slurm ]; then
  export cmd="slurm.pl --mem 4G"
  export train_cmd="slurm.pl --mem 16G --gpu 1"
  export decode_cmd="slurm.pl --mem 8G"
else
  echo "cmd.sh: unknown cmd_backend=${cmd_backend} (local|slurm)" >&2; return 1
fi
