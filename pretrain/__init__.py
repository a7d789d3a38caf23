"""The stand-in for ImageNet pretraining, a pipeline beside the product (`dvc repro
pretrain/dvc.yaml`) that makes the demo presets' init weights models/init/demo_{resnet,vit}.pth.

`pretrain.config` reads its params (group `pretrain` of pretrain/params.yaml),
`pretrain.classification` renders its synthetic classification set, and `pretrain.pretrain`
trains, scores and exports a CAM classifier per demo backbone. It imports `wsss_core`; nothing
in `wsss_core` imports it.
"""
