"""The thin GigaGAN model and training package built on gigagan_kernels."""
