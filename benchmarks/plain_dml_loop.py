"""The reference of ``bench_whole_run.py``: Deep Mutual Learning of two small CNNs in plain PyTorch.

It does the work that ``peerlearn train`` does for the benchmark's config, written the way one would
without a library: read the Fashion-MNIST IDX files, keep the given training / validation items, resize to
``size``×``size``, standardise with the training split's mean and std, then per epoch a seeded shuffle,
batches of ``batch``, one simultaneous DML step per batch,

    L_k = CE(z_k, y) + KL(p_l ‖ p_k),   p = softmax(z), the peer's p_l a constant,

one backward of L_1 + L_2, one SGD step per member, then top-1 / top-5 / NLL of each member and of the
ensemble (mean probabilities) on the validation split; at the end the same on the test split, and the
weights and metrics written to ``out``. It imports only torch, numpy and the standard library, so its
start-up cost and memory are those of PyTorch itself.

    python benchmarks/plain_dml_loop.py --data DIR --indices FILE --out DIR [--epochs 3]
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import sys
from pathlib import Path

if "--freeze-gc" in sys.argv:  # before the heavy imports, as peerlearn's command line does
    gc.disable()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped): big-endian dimensions after a 4-byte magic, then the values."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data[4:4 + 4 * ndim], ">u4"))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_part(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return images, labels


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 images, rounded back to uint8."""
    return F.interpolate(images.float(), size=(size, size), mode="bilinear",
                         align_corners=False).round().clamp(0, 255).to(torch.uint8)


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(width: int, classes: int = 10) -> nn.Module:
    """The same layers as peerlearn's ``small_cnn``: [conv-bn-relu ×2, maxpool] ×2, average pool, linear."""
    return nn.Sequential(block(1, width), block(width, width), nn.MaxPool2d(2),
                         block(width, 2 * width), block(2 * width, 2 * width), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))


@torch.inference_mode()
def evaluate(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, normalise, batch: int) -> dict:
    """top-1, top-5 and NLL of each model and of the mean of their probabilities."""
    for model in models:
        model.eval()
    logits = [torch.cat([m(normalise(x[i:i + batch])) for i in range(0, len(x), batch)]) for m in models]
    for model in models:
        model.train()
    probs = [z.softmax(1) for z in logits]
    probs.append(torch.stack(probs).mean(0))

    def score(p):
        top = p.topk(5, dim=1).indices
        return {"top1": float((top[:, 0] == y).float().mean()),
                "top5": float((top == y[:, None]).any(1).float().mean()),
                "nll": float(F.nll_loss(p.clamp_min(1e-12).log(), y))}

    return {name: score(p) for name, p in zip(["a", "b", "ensemble"], probs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder holding fashion-mnist/")
    parser.add_argument("--indices", type=Path, required=True, help="torch file {'train': idx, 'val': idx}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true",
                        help="models and batches in channels-last (NHWC) order, as peerlearn trains convolutional "
                             "networks on a CPU by default")
    parser.add_argument("--freeze-gc", action="store_true",
                        help="pause Python's cyclic garbage collector during start-up, then gc.freeze() and resume "
                             "it before the first step (what peerlearn's command line does: peerlearn/startup_gc.py)")
    parser.add_argument("--test-every-epoch", action="store_true",
                        help="also score the test split after every epoch (what peerlearn's default eval_test does)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    folder = args.data / "fashion-mnist"
    train_x, train_y = load_part(folder, "train")
    test_x, test_y = load_part(folder, "t10k")
    indices = torch.load(args.indices)
    val_x, val_y = resize(train_x[indices["val"]], args.size), train_y[indices["val"]]
    train_x, train_y = resize(train_x[indices["train"]], args.size), train_y[indices["train"]]
    test_x = resize(test_x, args.size)
    pixels = train_x.float().div(255.0)
    mean, std = pixels.mean(), pixels.std()
    del pixels

    def normalise(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - mean) / std
        if args.channels_last:  # explicit NHWC strides (one channel: .contiguous(channels_last) may keep NCHW's)
            n, c, h, w = x.shape
            x = torch.empty_strided(x.shape, (c * h * w, 1, w * c, c)).copy_(x)
        return x

    models = [small_cnn(args.width), small_cnn(args.width)]
    if args.channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    optimizers = [torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
                  for m in models]
    if args.freeze_gc:
        gc.freeze()
        gc.enable()
    history = []
    steps = len(train_y) // args.batch  # the last incomplete batch is dropped
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        for step in range(steps):
            index = order[step * args.batch:(step + 1) * args.batch]
            x, y = normalise(train_x[index]), train_y[index]
            logits = [m(x) for m in models]
            probs = [z.detach().softmax(1) for z in logits]
            losses = [F.cross_entropy(z, y) + F.kl_div(F.log_softmax(z, 1), probs[1 - k], reduction="batchmean")
                      for k, z in enumerate(logits)]
            for optimizer in optimizers:
                optimizer.zero_grad()
            sum(losses).backward()
            for optimizer in optimizers:
                optimizer.step()
        history.append({"epoch": epoch + 1, "val": evaluate(models, val_x, val_y, normalise, args.eval_batch)})
        if args.test_every_epoch:
            history[-1]["test"] = evaluate(models, test_x, test_y, normalise, args.eval_batch)
    final = {"val": history[-1]["val"],
             "test": history[-1]["test"] if args.test_every_epoch else evaluate(models, test_x, test_y, normalise,
                                                                                  args.eval_batch)}
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({name: m.state_dict() for name, m in zip("ab", models)}, args.out / "weights.pt")
    (args.out / "metrics.json").write_text(json.dumps({"history": history, "final": final}, indent=1))
    print(json.dumps({name: round(s["top1"], 4) for name, s in final["test"].items()}))


if __name__ == "__main__":
    main()
