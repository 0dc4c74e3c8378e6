"""OpenAI CLIP ViT-L/14 through Hugging Face `transformers`: OpenAI's image preprocessing (done here
with PIL + numpy, not by the HF image processor) and the projected image / text embeddings.

Image preprocessing, exactly OpenAI's `clip.load` transform:
  1. resize so the short side is 224, PIL bicubic; the long side becomes int(224 * long / short);
  2. centre crop 224 x 224 at top = round((h - 224) / 2), left = round((w - 224) / 2), Python's
     round (half to even). (HF's CLIPImageProcessor floors these offsets: one pixel off for some sizes.)
  3. convert to RGB; 4. /255, minus MEAN, divided by STD (done on the device, batched: `pixels`).
`preprocess` stops after step 3 and returns uint8 [224, 224, 3]: a quarter of the float size to keep
and to pass between processes.

Loading: `name` is a local folder in Hugging Face format or a hub name. A hub name is looked up in the
local Hugging Face cache only when the hub cannot be reached (HF_HUB_OFFLINE is set, or no connection to
the hub's endpoint within a few seconds), so that an offline machine gets its one-line error at once,
not after the hub client's retries (half a minute).

Features: image = `get_image_features` (the visual projection of the pooled CLS token, what OpenAI's
`encode_image` returns), not normalised; text = `get_text_features` (77-token context, longer text
truncated), unit-normalised. Both 768-d for ViT-L/14.
"""
import os
import socket
from typing import Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from dataloader.base import FEATURE_DIM
from util.errors import CheckpointError

from .config import CLIP_MODEL

SIZE = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT = 77
DEFAULT_MODEL = CLIP_MODEL  # the one default CLIP of every entry point (video/config.py)
HUB_PROBE_S = 3.0   # how long a connection to the hub may take before the machine counts as offline


def hub_offline() -> Optional[str]:
    """Why the Hugging Face hub cannot be reached now, or None: HF_HUB_OFFLINE set, or no TCP connection
    to its endpoint (HF_ENDPOINT) within HUB_PROBE_S seconds. Behind a proxy the hub client is left to try."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_S).close()
    except OSError as e:
        return f"no connection to {constants.ENDPOINT}: {e.strerror or e}"
    return None


def resized_size(w: int, h: int, size: int = SIZE):
    """(w, h) after resizing the short side to `size`; the long side is int(size * long / short)."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def preprocess(img) -> np.ndarray:
    """PIL image -> uint8 [224, 224, 3]: resize (bicubic), centre crop (rounded offsets), RGB."""
    from PIL import Image
    img = img.resize(resized_size(*img.size), Image.Resampling.BICUBIC)
    w, h = img.size
    top, left = int(round((h - SIZE) / 2.0)), int(round((w - SIZE) / 2.0))
    img = img.crop((left, top, left + SIZE, top + SIZE)).convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy


def pixels(frames: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [B, 224, 224, 3] -> normalised [B, 3, 224, 224] in `dtype` (computed in fp32, then cast)."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, H, W]
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def _embedding(out) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; 5.x a model output whose pooler_output it is."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


class ClipEncoder:
    """CLIP image/text encoder on one device. `name`: a local folder in Hugging Face format (config,
    weights, tokenizer files) or a hub name; `model`: an already built CLIPModel (then `name` is only
    where the tokenizer is looked for)."""

    def __init__(self, name: str = DEFAULT_MODEL, device="cpu", dtype=torch.float32, model=None):
        import transformers
        from transformers import CLIPModel
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.name, self.device, self.dtype = str(name), torch.device(device), dtype
        self._offline = None if os.path.isdir(self.name) else hub_offline()   # None: a folder, or the hub is up
        if model is None:
            model = self._load(CLIPModel, "a CLIP model")
        dim = model.config.projection_dim
        if dim != FEATURE_DIM:
            raise CheckpointError(f"--clip_model {self.name}: projection_dim is {dim}; the feature files hold "
                                  f"{FEATURE_DIM}-d CLIP ViT-L/14 embeddings")
        self.model = model.to(self.device, dtype).eval()
        self._tokenizer = None

    @torch.inference_mode()
    def images(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 224, 224, 3] (from `preprocess`) -> fp32 [B, 768] projected image embeddings."""
        x = pixels(frames.to(self.device, non_blocking=True), self.dtype)
        return _embedding(self.model.get_image_features(pixel_values=x)).float()

    @property
    def tokenizer(self):
        return self.load_tokenizer()

    def load_tokenizer(self):
        """CLIP's tokenizer from the model folder (loaded once)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer
            self._tokenizer = self._load(AutoTokenizer, "a CLIP tokenizer")
        return self._tokenizer

    def _load(self, cls, what: str):
        """cls.from_pretrained(name), from the local cache only while the hub is unreachable."""
        try:
            return cls.from_pretrained(self.name, local_files_only=self._offline is not None)
        except (OSError, ValueError) as e:
            if self._offline:
                raise CheckpointError(f"--clip_model {self.name}: no such folder, and the hub is unreachable "
                                      f"({self._offline}) while the Hugging Face cache does not hold {what} of "
                                      f"that name; pass a local folder in Hugging Face format (or download it "
                                      f"once online)") from None
            raise CheckpointError(f"--clip_model {self.name}: cannot load {what}: {e}") from None

    @torch.inference_mode()
    def texts(self, sentences: Sequence[str]) -> torch.Tensor:
        """Strings -> fp32 [N, 768] unit-norm projected text embeddings (77 tokens, longer text cut)."""
        tok = self.tokenizer(list(sentences), padding=True, truncation=True, max_length=CONTEXT,
                             return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        out = _embedding(self.model.get_text_features(**tok)).float()
        return F.normalize(out, dim=-1)
