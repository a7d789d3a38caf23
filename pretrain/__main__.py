"""Stages of the pretraining pipeline (pretrain/dvc.yaml); see pretrain.pretrain.

    python -m pretrain data --backbone resnet     # the ResNet's classification set, data/pretrain/resnet
    python -m pretrain data --backbone vit        # the ViT's classification set, data/pretrain/vit
    python -m pretrain train --backbone resnet    # → models/init/demo_resnet.pth
    python -m pretrain train --backbone vit       # → models/init/demo_vit.pth

Params: `pretrain` of pretrain/params.yaml (the shared keys and `pretrain.<backbone>`),
`train.device` of params.yaml (run from the repository root, as the stages' `wdir: ..` does).
"""
import argparse

from pretrain import pretrain as pretraining
from pretrain.config import BACKBONES, load_pretrain_params
from wsss_core.cli import run_stage
from wsss_core.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("data", "train"):
        commands.add_parser(command).add_argument("--backbone", required=True, choices=BACKBONES)
    args = parser.parse_args()
    p = load_pretrain_params()
    if args.command == "data":
        summary = pretraining.make_classification_set(p, args.backbone)
        print(f"classification set of {args.backbone}: {summary['images']} images → "
              f"{pretraining.DATA_DIRS[args.backbone]}")
    else:
        report = pretraining.pretrain_backbone(p, args.backbone, device=load_params().train.device)
        print(f"pretrained {args.backbone}: {report['iterations']} iterations in "
              f"{report['train_time_s']} s, loss {report['final_loss']}, val mAP "
              f"{report['val_map']} → {report['init_file']}")


if __name__ == "__main__":
    run_stage(main)
