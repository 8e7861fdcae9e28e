"""The latent-space layer: the autoencoder (model, latent space, its trainer and CLI), the KD losses,
the distiller of a KD run and the distillation CLI (``python -m lambda_blocks.latent.distill``).

Nothing is imported here, so ``config`` can import ``latent.autoencoder`` without a cycle; import
the modules themselves.
"""

SPACES = ("pixel", "latent")  # where a run's diffusion lives (config.latent.space)
