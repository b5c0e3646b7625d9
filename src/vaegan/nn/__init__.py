"""The networks and how they train: VAE/GAN networks, losses, the latent prior, the optimisation step,
the training loop, resume policy, devices and DDP."""
