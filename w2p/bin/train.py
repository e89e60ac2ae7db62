"""Train a system (Wav2Prompt or a baseline) from a YAML config.

    python -m w2p.bin.train --config conf/train_w2p.yaml --train_dir dump/fbank/train \\
        --valid_dir dump/fbank/dev --output_dir exp/w2p [--llm SRC] [--init exp/Y/model.pt] [--resume] \\
        [--ngpu N | --nproc N] [--key.sub value ...]

``--config`` may be repeated: ``--config conf/train_wav2prompt.yaml --config conf/train_wav2prompt_ce.yaml``
lays the second over the first (stage 4's CE phase: the same architecture, other loss weights and schedule).

Any config key can be overridden on the command line (``--optim_conf.lr 5e-4 --max_epoch 3``).
With ``--nproc N`` (CPU, gloo) or ``--ngpu N`` > 1 (NCCL) it relaunches itself under torchrun. With
``--num_nodes N`` > 1 it is started once per node (utils/slurm.pl --num_nodes N: srun, one task per node) and each
start runs one torchrun that meets the others at ``$W2P_RDZV_ENDPOINT`` (host:port, exported by slurm.pl).
"""
from __future__ import annotations

import argparse
import os
import sys

from w2p.errors import cli_main, nonnegative_int, positive_int


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="w2p.bin.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, action="append",
                   help="YAML config (keys: see w2p/train/config.py DEFAULTS); repeat it to lay a config over "
                   "another (later files only state what they change)")
    p.add_argument("--train_dir", required=True, help="dump dir of the training set (dump/fbank/train)")
    p.add_argument("--valid_dir", required=True, help="dump dir of the validation set (dump/fbank/dev)")
    p.add_argument("--output_dir", required=True, help="exp dir (config.yaml, train.log, model.pt, ...)")
    p.add_argument("--llm", default=None, help="LLM source (overrides the config's llm): smollm2-135m | HF dir | "
                   "file.gguf")
    p.add_argument("--init", default=None, help="initialise matching parameters from this model.pt")
    p.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoint.pt if present")
    p.add_argument("--ngpu", type=nonnegative_int, default=0, help="GPUs per node (0 = CPU)")
    p.add_argument("--nproc", type=nonnegative_int, default=0, help="processes per node (default: max(1, ngpu))")
    p.add_argument("--num_nodes", type=positive_int, default=1,
                   help="nodes (> 1: one torchrun per node, rendezvous at $W2P_RDZV_ENDPOINT; see utils/slurm.pl)")
    p.add_argument("--num_threads", type=nonnegative_int, default=0,
                   help="torch CPU threads per process (0 = torch default; 1 is much faster than 2 on a busy CPU)")
    return p


def _relaunch(nproc: int, argv: list[str], num_nodes: int = 1) -> int:
    """Re-run this entry point under torchrun with ``nproc`` processes on this node (of ``num_nodes``)."""
    from torch.distributed.run import main as torchrun

    if num_nodes > 1:
        endpoint = os.environ.get("W2P_RDZV_ENDPOINT")
        if not endpoint:
            raise SystemExit("--num_nodes > 1 needs the rendezvous host:port in $W2P_RDZV_ENDPOINT: launch through "
                             "utils/slurm.pl --num_nodes N (cmd_backend=slurm), which exports it on every node")
        where = [f"--nnodes={num_nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                 f"--rdzv_id={os.environ.get('W2P_RDZV_ID', 'w2p')}"]
    else:
        where = ["--standalone"]
    # "--": torchrun must not try to parse our options (argparse prefix matching: --nproc ~ --nproc-per-node)
    args = [*where, f"--nproc_per_node={nproc}", "--module", "--", "w2p.bin.train", *argv]
    os.environ["W2P_LAUNCHED"] = "1"
    torchrun(args)
    return 0


@cli_main
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = get_parser().parse_known_args(argv)
    nproc = args.nproc or max(1, args.ngpu)
    if (nproc > 1 or args.num_nodes > 1) and "WORLD_SIZE" not in os.environ:
        return _relaunch(nproc, argv, args.num_nodes)

    import torch

    from w2p.train.config import load_config
    from w2p.train.trainer import Trainer, model_needs_llm, model_needs_llm_forward

    conf = load_config(args.config, extra)
    if args.llm:
        conf["llm"] = args.llm
    # keep CPU threads per process sensible when several processes share a node
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    elif args.ngpu == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    llm = None
    if conf.get("llm") and str(conf["llm"]).lower() != "none" and model_needs_llm(conf["model"]):
        from w2p.llm import FrozenLLM

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if args.ngpu > 0 else "cpu"
        forward = model_needs_llm_forward(conf["model"], conf.get("model_conf") or {})
        # FSDP: every rank loads on the CPU; the trainer shards the layers, then moves the LLM to its device
        llm = FrozenLLM.load(conf["llm"], dtype=getattr(torch, conf.get("llm_dtype", "float32")),
                             device="cpu" if conf.get("llm_fsdp") and forward else device,
                             embeddings_only=not forward)
        if forward and conf.get("llm_checkpointing"):
            llm.enable_checkpointing()
    os.makedirs(args.output_dir, exist_ok=True)
    trainer = Trainer(conf, train_dir=args.train_dir, valid_dir=args.valid_dir, output_dir=args.output_dir,
                      llm=llm, init=args.init, resume=args.resume, ngpu=args.ngpu)
    out = trainer.run()
    trainer.dist.close()
    if trainer.dist.main:
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
