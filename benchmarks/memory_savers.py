"""Peak CPU memory of one training forward + backward with and without the memory savers.

    python benchmarks/memory_savers.py [--crop 161] [--vit-crop 224] [--batch 2]

Each case runs in its own process (a high-water mark cannot be reset): it builds the model, does
one forward + backward without timing it, and reports the process's peak RSS
(`resource.getrusage(...).ru_maxrss`) minus its RSS just before the step, i.e. what the step
itself added on top of the model and its inputs. PyTorch's CPU allocator keeps no statistics, and
tracemalloc does not see tensor storage, so RSS is the measure. Cases: DeepLab v2 MSC on a
ResNet-50-depth backbone (blocks 3-4-6-3, full width) and a DuPL student pair on
`deit_small_patch16_224` (12 blocks, width 384).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_case(case: dict) -> dict:
    import torch

    from wsss_core.methods import build_model

    torch.manual_seed(0)
    torch.set_num_threads(case["threads"])
    options = {k: True for k in case["savers"]}
    if case["model"] == "deeplab":
        model = build_model("baseline", 21, blocks=[3, 4, 6, 3], width=64,
                            msc_scales=[0.5, 0.75], **options)
        images = torch.randn(case["batch"], 3, case["crop"], case["crop"])
        loss_of = lambda out: sum(t.square().mean() for t in out.main)  # noqa: E731
    else:
        model = build_model("dupl", 21, backbone="deit_small_patch16_224", **options)
        images = torch.randn(case["batch"], 3, case["vit_crop"], case["vit_crop"])
        loss_of = lambda out: sum(s.seg.square().mean() + s.cls.sum()  # noqa: E731
                                  for s in (out.student1, out.student2))
    model.train()
    before = _rss_mib()
    loss_of(model(images)).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"before_mib": before, "peak_mib": peak, "step_mib": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=161)
    parser.add_argument("--vit-crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    rows = []
    for model, saver_sets in (("deeplab", [[], ["grad_checkpointing"], ["channels_last"]]),
                              ("dupl", [[], ["grad_checkpointing"]])):
        for savers in saver_sets:
            case = {"model": model, "savers": savers, "crop": args.crop, "vit_crop": args.vit_crop,
                    "batch": args.batch, "threads": args.threads}
            out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                 check=True, capture_output=True, text=True).stdout
            rows.append((model, "+".join(savers) or "none", json.loads(out.splitlines()[-1])))
    print(f"{'model':8} {'savers':20} {'RSS before MiB':>15} {'peak MiB':>9} {'step adds MiB':>14}")
    for model, savers, r in rows:
        print(f"{model:8} {savers:20} {r['before_mib']:15.0f} {r['peak_mib']:9.0f} "
              f"{r['step_mib']:14.0f}")
    for model in ("deeplab", "dupl"):
        plain = next(r for m, s, r in rows if m == model and s == "none")
        saved = next(r for m, s, r in rows if m == model and s == "grad_checkpointing")
        print(f"{model}: grad_checkpointing step memory {saved['step_mib'] / plain['step_mib']:.2f}x"
              " the plain step's")


if __name__ == "__main__":
    main()
