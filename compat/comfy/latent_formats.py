"""`comfy.latent_formats`: the latent formats of the families comfyd runs."""
from models.latent_formats import *  # noqa: F401,F403
from models.latent_formats import SD15, SDXL, LatentFormat  # noqa: F401
