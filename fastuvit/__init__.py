"""fastuvit: a fast, checkpoint-compatible U-ViT (Bao et al., CVPR 2023) with fused Triton kernels.

    from fastuvit import UViT            # drop-in for libs.uvit.UViT
    model = fastuvit.create_model("imagenet256_uvit_huge")
    fastuvit.load_checkpoint(model, "imagenet256_uvit_huge.pth")

``fastuvit.reference`` is the eager ground truth; ``fastuvit.ops`` the functional fused ops;
``fastuvit.autoencoder`` and ``fastuvit.text`` the Stable Diffusion autoencoder and the CLIP text
encoder of the latent models. Importing fastuvit needs neither Triton nor a GPU, nor diffusers and
transformers (the ``latent`` extra, imported when an autoencoder or a text encoder is built).
"""
from . import _source_tree

_source_tree.map_checkout_kernels()  # before anything imports fastuvit.kernels
from . import autoencoder, data, distributed, ops, pipeline, reference, sampling, text, training
from .checkpoint import load_checkpoint, load_model, load_state_dict_file, save_state_dict
from .configs import CONFIGS, create_model, model_config
from .model import UViT, UViTT2I, example_inputs

__version__ = "0.1.0"

__all__ = [
    "UViT", "UViTT2I", "example_inputs", "create_model", "model_config", "CONFIGS",
    "load_checkpoint", "load_model", "load_state_dict_file", "save_state_dict",
    "ops", "reference", "data", "distributed", "sampling", "training", "pipeline", "autoencoder", "text",
    "__version__",
]
