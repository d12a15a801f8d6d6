"""CLIP zero-shot classification (Radford et al. 2021), the SAS authors' ``clip_0shot_approx`` for latent classes:
each image goes to the class whose prompt-averaged text embedding is most similar to its image embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backbones import Backbone

# a subset of the CLIP ImageNet prompt templates the SAS notebook averages over
TEMPLATES = ("a photo of a {}.", "a bad photo of the {}.", "a low resolution photo of the {}.", "itap of the {}.",
             "a photo of the large {}.", "a photo of the small {}.", "a cropped photo of the {}.")


@torch.no_grad()
def class_text_embeddings(clip: Backbone, class_names: list[str], device: torch.device) -> torch.Tensor:
    """(C, D) unit-norm text embeddings, each the normalised mean over ``TEMPLATES``."""
    import open_clip

    if clip.spec.kind != "open_clip":
        raise ValueError("zero-shot latent classes need an open_clip backbone")
    model = clip.net.model
    tokenizer = open_clip.get_tokenizer(clip.spec.name)
    out = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in TEMPLATES]).to(device)
        e = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(0)
        out.append(F.normalize(e, dim=0))
    return torch.stack(out)


def zero_shot_labels(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """argmax_c cos(image, class c): (N, D) x (C, D) -> (N,) class indices."""
    return (F.normalize(image_features.float(), dim=-1) @ text_features.T).argmax(1)
