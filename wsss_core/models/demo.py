"""The CPU demo's two backbones, shared by the presets that must agree on them: the demo
DeepLab and the `cam` classifier's ResNet (whose pretrained weights initialise it), DuPL's demo
student and the `cam` classifier's ViT (likewise)."""

# DeepLab v2's dilated ResNet cut to one block per stage, width 16
DEMO_RESNET = {"blocks": [1, 1, 1, 1], "width": 16}
# a DeiT-Tiny layout cut to 4 blocks of width 128, 8-px patches (a 12×12 token grid on 96-px crops)
DEMO_VIT = {"vit_name": "deit_tiny_patch16_224", "patch_size": 8, "depth": 4, "embed_dim": 128,
            "num_heads": 4}
