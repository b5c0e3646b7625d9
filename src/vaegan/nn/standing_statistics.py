"""BatchNorm statistics of the decoder's moving average, recomputed for its own weights.

`train.ema_decay` averages the decoder's weights and, with them, its BatchNorm running statistics:
the average of the statistics of the weights the decoder passed through, not the statistics of the
averaged weights. Where the weights move fast the two part (the `full` profile's averaged decoder
gave 12x the FID floor after 60 epochs and a constant image after 120; recomputed, 2.3-2.5x after 60:
docs/training.md). As BigGAN does for its averaged generator ("standing statistics") and
`torch.optim.swa_utils.update_bn` for SWA, the statistics are recomputed once at the end of
training, over one pass of the training images, with the calls the training step makes: the decoder
on codes drawn from q(z|x), and separately on prior samples.
"""

from __future__ import annotations

import torch
from torch import nn

from vaegan.nn.step import reparameterize


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `module` that keep running statistics."""
    return [
        layer
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats
    ]


@torch.no_grad()
def recompute_decoder_statistics(
    decoder: nn.Module, encoder: nn.Module, images: torch.Tensor, batch_size: int, seed: int
) -> int:
    """Replace every BatchNorm running mean and variance of `decoder` by their exact average over
    batches of `images` (N, 1, H, W) in order: per batch, the decoder on z ~ q(z|x) (the encoder in
    eval mode, its statistics untouched) and, in a call of its own, on z ~ N(0, I). The noise comes
    from a generator seeded with `seed`, so every DDP rank computes the same statistics. fp32,
    whatever the training's precision (the exported generator runs in fp32). Returns the number of
    decoder calls the statistics average; the modules' train/eval modes are left as they were."""
    layers = batchnorm_layers(decoder)
    if not layers:
        return 0
    was_training = decoder.training, encoder.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every call weighs the same
    decoder.train()
    encoder.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    size = min(batch_size, len(images))
    calls = 0
    for start in range(0, len(images) - size + 1, size):  # full batches: BatchNorm's own batch size
        mu, logvar = encoder(images[start : start + size])  # (B, Z) each
        noise = torch.randn(2, *mu.shape, generator=generator, device=mu.device)
        decoder(reparameterize(mu, logvar, noise[0]))
        decoder(noise[1])
        calls += 2
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    decoder.train(was_training[0])
    encoder.train(was_training[1])
    return calls
