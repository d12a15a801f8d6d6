"""Embedding throughput (decode + transform + forward) vs the floor (forward alone on pre-decoded tensors), and
proxy-training throughput, on the same real CIFAR-10 images in one run.

    python bench/bench_embeddings.py [--n 5000] [--device auto]
"""

from __future__ import annotations

import argparse

import common
import torch

from fo_plugin.core.device import resolve_device
from fo_plugin.core.embed import embed_array
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.models import ProxyModel
from fo_plugin.core.rng import sample_keys
from fo_plugin.core.train import TrainConfig, train_proxy
from fo_plugin.data import cifar10_files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    paths = [p for p, _, _ in cifar10_files("train", per_class=args.n // 10)][: args.n]
    model = ProxyModel().to(dev).eval()
    bs = args.batch_size

    def ours():
        for _, images, ok, _ in iter_decoded(paths, 32, batch_size=max(bs, 256)):
            embed_array(model.features, images[ok], 32, dev, bs)

    # the floor's input in the memory format embed_array gives the model (NHWC by default), and NCHW beside it
    decoded = torch.cat([to_float(b[1], "cpu") for b in iter_decoded(paths, 32, batch_size=1024)]).to(dev)
    nchw, nhwc = decoded.contiguous(), decoded.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(x):
        for s in range(0, len(x), bs):
            model.features(x[s:s + bs])
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_ours, t_floor, t_nchw = (common.best_of(ours), common.best_of(lambda: forward(nhwc)),
                               common.best_of(lambda: forward(nchw)))
    rows = [{"what": "embed: decode+transform+forward (ours)", "images/s": len(paths) / t_ours,
             "ratio to floor": t_ours / t_floor},
            {"what": "floor: forward on pre-decoded NHWC tensors (embed_array's layout)", "images/s": len(paths) / t_floor,
             "ratio to floor": 1.0},
            {"what": "forward on NCHW tensors (embed_array(channels_last=False))", "images/s": len(paths) / t_nchw,
             "ratio to floor": t_nchw / t_floor}]
    common.table(rows, f"Embedding throughput, {len(paths)} CIFAR-10 images, proxy width 32, {dev}")

    imgs = next(iter_decoded(paths, 32, batch_size=len(paths)))[1]
    _, hist = train_proxy(imgs, sample_keys(range(len(imgs))), TrainConfig(epochs=2, batch_size=bs), dev)
    common.table([{"epoch": h["epoch"], "loss": h["loss"], "train images/s": h["images_per_s"]} for h in hist],
                 f"Proxy SimCLR training throughput (2 views/image, batch {bs}, {dev})")


if __name__ == "__main__":
    main()
