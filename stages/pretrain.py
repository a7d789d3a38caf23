"""Stages of the pretraining pipeline (pretrain/dvc.yaml); see wsss_core.pretrain.

    python stages/pretrain.py data                       # the classification set, data/pretrain
    python stages/pretrain.py train --backbone resnet    # → models/init/demo_resnet.pth
    python stages/pretrain.py train --backbone vit       # → models/init/demo_vit.pth
"""
import argparse

from wsss_core import pretrain
from wsss_core.cli import run_stage
from wsss_core.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("data")
    commands.add_parser("train").add_argument("--backbone", required=True,
                                              choices=sorted(pretrain.CAM_PRESET))
    args = parser.parse_args()
    params = load_params()
    if args.command == "data":
        summary = pretrain.make_classification_set(params)
        print(f"classification set: {summary['images']} images → {pretrain.DATA_DIR}")
    else:
        report = pretrain.pretrain_backbone(params, args.backbone)
        print(f"pretrained {args.backbone}: {report['iterations']} iterations in "
              f"{report['train_time_s']} s, loss {report['final_loss']}, val mAP "
              f"{report['val_map']} → {report['init_file']}")


if __name__ == "__main__":
    run_stage(main)
