"""Run one stage of the library in every process of a ``torchrun`` job (several GPUs or nodes)::

    torchrun --nproc_per_node 8 -m fo_plugin.launch embeddings --dataset NAME [--key FIELD] [--kwargs JSON]

stage: ``embeddings`` | ``influence`` | ``clcore`` (:func:`compute_ssl_embeddings`, :func:`compute_ssl_influence`,
:func:`compute_clcore`) on the dataset, or on one of its saved views (``--view``). ``--key`` is the embeddings field
(embeddings) or the run key (influence, CL-Core); ``--kwargs`` any other keyword arguments as a JSON object. Every
rank computes its share (see :mod:`fo_plugin.core.distributed`); rank 0 writes the fields and records the run and
prints its summary as JSON. Without torchrun (one process) it is the plain library call.
"""

from __future__ import annotations

import argparse
import json
import sys

STAGES = ("embeddings", "influence", "clcore")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m fo_plugin.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--dataset", required=True, help="FiftyOne dataset name (every rank must reach its database)")
    parser.add_argument("--view", default=None, help="a saved view of the dataset to run on (default: all samples)")
    parser.add_argument("--key", default=None, help="embeddings field (embeddings) or run key (influence, clcore)")
    parser.add_argument("--kwargs", default="{}", help="other keyword arguments of the stage, as a JSON object")
    parser.add_argument("--backend", default="auto", help="torch.distributed backend: auto (nccl on CUDA, else gloo)")
    args = parser.parse_args(argv)
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
        parser.error("--kwargs must be a JSON object")

    import fiftyone as fo

    import fo_plugin
    from fo_plugin.core import distributed

    ctx = distributed.init(args.backend)
    try:
        dataset = fo.load_dataset(args.dataset)
        samples = dataset.load_saved_view(args.view) if args.view else dataset
        fn = {"embeddings": fo_plugin.compute_ssl_embeddings, "influence": fo_plugin.compute_ssl_influence,
              "clcore": fo_plugin.compute_clcore}[args.stage]
        kwargs.setdefault("progress", ctx.rank == 0)  # one progress bar for the job, on rank 0
        out = fn(samples, args.key, **kwargs) if args.key else fn(samples, **kwargs)
        if ctx.rank == 0:
            print(json.dumps(out, default=str), flush=True)
        return out
    finally:
        if ctx.initialised:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
