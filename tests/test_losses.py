"""Known answers for the loss terms and the gradient routing of the VAE/GAN step.

The expected gradients are computed here with torch.autograd.grad from independently written
formulas, then compared with what `backward_passes` accumulated into each network.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaegan.nn.losses import (
    discriminator_bce,
    equilibrium_gates,
    feature_llike,
    generator_bce,
    kl_prior,
    pixel_recon,
)
from vaegan.nn.networks import build_model, model_args_for
from vaegan.nn.step import (
    LossSettings,
    StepModules,
    backward_passes,
    reparameterize,
    train_step,
    vae_objectives,
    vaegan_objectives,
)


def test_kl_prior_closed_form() -> None:
    mu = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.25)], [0.0, 0.0, 0.0]])
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2, summed over dims, mean over rows.
    row0 = 0.0 + 0.5 * (1 + 4 - 1 - math.log(4.0)) + 0.5 * (4 + 0.25 - 1 - math.log(0.25))
    row1 = 0.5 * 0.25
    assert kl_prior(mu, logvar).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert kl_prior(mu, logvar).item() == pytest.approx(reference.item(), rel=1e-6)
    assert kl_prior(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0.0


def test_feature_llike_is_half_squared_distance_per_image() -> None:
    real = torch.zeros(2, 3, 2, 2)
    recon = torch.zeros(2, 3, 2, 2)
    recon[0, 0, 0, 0] = 2.0  # image 0: 1/2 * 4 = 2
    recon[1] = 1.0  # image 1: 1/2 * 12 = 6
    assert feature_llike(recon, real).item() == pytest.approx(4.0)


def test_pixel_recon_bce_and_mse() -> None:
    x = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    logits = torch.tensor([[[[0.0, 0.0]]]])
    assert pixel_recon(logits, x, "bce").item() == pytest.approx(2 * math.log(2.0), rel=1e-6)
    assert pixel_recon(logits, x, "mse").item() == pytest.approx(0.5 * (0.25 + 0.25))
    with pytest.raises(ValueError, match="unknown pixel loss"):
        pixel_recon(logits, x, "l1")


def test_gan_bce_values() -> None:
    real, fake = discriminator_bce(torch.tensor([0.0, 0.0]), torch.tensor([0.0]))
    assert real.item() == pytest.approx(math.log(2.0)) and fake.item() == pytest.approx(math.log(2.0))
    # Non-saturating: -log sigmoid(l)
    assert generator_bce(torch.tensor([2.0])).item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))))


def test_equilibrium_gates() -> None:
    t, m = 0.68, 0.35
    gates = [
        tuple(bool(g) for g in equilibrium_gates(torch.tensor(r), torch.tensor(f), t, m))
        for r, f in [(0.7, 0.7), (0.1, 0.7), (1.5, 0.7), (0.1, 1.5)]
    ]
    # balanced: both learn; D too good: D stops; D too bad: G stops; both conditions: both learn
    assert gates == [(True, True), (False, True), (True, False), (True, True)]


def _setup(seed: int = 0, preset: str = "seed"):
    torch.manual_seed(seed)
    model = build_model(model_args_for(preset)).train()
    x = torch.rand(6, 1, 28, 28)
    eps = torch.randn(6, model.args.latent_dim)
    z_prior = torch.randn(6, model.args.latent_dim)
    return model, x, eps, z_prior


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _expected_terms(model, x, eps, z_prior, gan_on_recon=True, d_pass="split"):
    """The loss terms written out independently of vaegan.nn.losses (same forward layout: D on the
    real images in a call of its own for `split`, on all images at once for `fused`)."""
    b = x.shape[0]
    mu, logvar = model.encoder(x)
    z = mu + eps * torch.exp(0.5 * logvar)
    logits = torch.cat([model.decoder(z), model.decoder(z_prior)])  # separate BatchNorm batches
    if d_pass == "fused":
        d_logit, feats = model.discriminator(torch.cat([x, torch.sigmoid(logits)]))
    else:
        (real_logit, real_feats), (fake_logit, fake_feats) = (
            model.discriminator(x), model.discriminator(torch.sigmoid(logits))
        )  # fmt: skip
        d_logit, feats = torch.cat([real_logit, fake_logit]), torch.cat([real_feats, fake_feats])
    prior = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()
    llike = 0.5 * ((feats[b : 2 * b] - feats[:b]) ** 2).sum(dim=(1, 2, 3)).mean()
    p = torch.sigmoid(logits[:b]).clamp(1e-12, 1 - 1e-12)
    pixel = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=(1, 2, 3)).mean()
    fake = torch.cat([d_logit[2 * b :], d_logit[b : 2 * b]]) if gan_on_recon else d_logit[2 * b :]
    sig = torch.sigmoid
    dis = -torch.log(sig(d_logit[:b])).mean() - torch.log(1 - sig(fake)).mean()
    gen = -torch.log(sig(fake)).mean()
    return prior, llike, pixel, dis, gen


@pytest.mark.parametrize(
    ("recon_loss", "preset", "d_pass"),
    [
        ("both", "seed", "split"),
        ("feature", "seed", "split"),
        ("pixel", "seed", "split"),
        ("both", "default", "split"),
        ("both", "seed", "fused"),
        ("both", "default", "fused"),
    ],
)
def test_each_network_gets_exactly_its_objective_gradient(recon_loss: str, preset: str, d_pass: str) -> None:
    model, x, eps, z_prior = _setup(preset=preset)
    settings = LossSettings(
        recon_loss=recon_loss, beta=0.7, gamma=0.05, encoder_llike_weight=0.3, gan_weight=2.5, d_pass=d_pass
    )
    objectives = vaegan_objectives(
        model.encoder, model.decoder, model.discriminator, x, eps, z_prior, settings
    )
    backward_passes(objectives, model.encoder, model.decoder, model.discriminator)
    got = {name: _grads(getattr(model, name)) for name in ("encoder", "decoder", "discriminator")}

    prior, llike, pixel, dis, gen = _expected_terms(model, x, eps, z_prior, d_pass=d_pass)
    feat, pix = recon_loss in ("feature", "both"), recon_loss in ("pixel", "both")
    enc_obj = 0.7 * prior + 0.3 * feat * llike + pix * pixel
    dec_obj = 0.05 * feat * llike + pix * pixel + 2.5 * gen
    expected = {
        "encoder": torch.autograd.grad(enc_obj, list(model.encoder.parameters()), retain_graph=True),
        "decoder": torch.autograd.grad(dec_obj, list(model.decoder.parameters()), retain_graph=True),
        "discriminator": torch.autograd.grad(dis, list(model.discriminator.parameters())),
    }
    for name in got:
        assert len(got[name]) == len(expected[name])
        for g, e in zip(got[name], expected[name], strict=True):
            # atol: biases just before a BatchNorm have a true gradient of 0 (float noise ~1e-6)
            atol = 1e-6 if preset == "seed" else 2e-5
            torch.testing.assert_close(g, e, rtol=1e-4, atol=atol, msg=f"{name} gradient differs")
        assert any(g.abs().sum() > 0 for g in got[name]), f"{name} got no gradient at all"


def test_decoder_never_sees_posterior_and_prior_codes_in_one_batch() -> None:
    """Issue 3: with BatchNorm, one shared batch lets the encoder move the posterior where it
    dominates the batch statistics and G(z_p) decays to grey; each kind of code gets its own call."""
    model, x, eps, z_prior = _setup(preset="default")
    batches: list[torch.Tensor] = []
    hook = model.decoder.register_forward_pre_hook(lambda _module, args: batches.append(args[0].detach()))
    vaegan_objectives(model.encoder, model.decoder, model.discriminator, x, eps, z_prior, LossSettings())
    hook.remove()
    mu, logvar = model.encoder(x)
    posterior = reparameterize(mu, logvar, eps).detach()
    assert len(batches) == 2
    torch.testing.assert_close(batches[0], posterior)
    assert torch.equal(batches[1], z_prior)


def _input_gradient_rows(d_pass: str) -> list[int]:
    """Rows of each input gradient D's first layer computed during one step's backward passes."""
    model, x, eps, z_prior = _setup(preset="default")
    rows: list[int] = []

    def record(_module: torch.nn.Module, grad_in: tuple[torch.Tensor | None, ...], _out: object) -> None:
        rows.append(0 if grad_in[0] is None else grad_in[0].shape[0])

    first = next(m for m in model.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_full_backward_hook(record)
    settings = LossSettings(d_pass=d_pass)
    obj = vaegan_objectives(model.encoder, model.decoder, model.discriminator, x, eps, z_prior, settings)
    backward_passes(obj, model.encoder, model.decoder, model.discriminator)
    return rows


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_split_pass_keeps_real_images_out_of_the_generator_backward_passes() -> None:
    """`split`: D's backward passes for the encoder and decoder objectives run over the 2B fake
    images only; `fused` propagates input gradients through all 3B rows. D's own pass needs none."""
    b = 6
    assert sum(_input_gradient_rows("split")) == 2 * (2 * b)
    assert sum(_input_gradient_rows("fused")) == 2 * (3 * b)


def test_an_unknown_d_pass_is_refused_not_run_as_split() -> None:
    model = build_model(model_args_for("seed"))
    x, noise = torch.rand(4, 1, 28, 28), torch.randn(4, 2)
    settings = LossSettings(d_pass="joint")  # type: ignore[arg-type]  # what the config would refuse
    with pytest.raises(ValueError, match="d_pass must be 'split' or 'fused', not 'joint'"):
        vaegan_objectives(model.encoder, model.decoder, model.discriminator, x, noise, noise, settings)


def test_encoder_gradient_ignores_the_gan_term_and_discriminator_ignores_llike() -> None:
    model, x, eps, z_prior = _setup()
    settings = LossSettings()

    def grads_of(m):
        for p in m.parameters():
            p.grad = None
        obj = vaegan_objectives(m.encoder, m.decoder, m.discriminator, x, eps, z_prior, settings)
        backward_passes(obj, m.encoder, m.decoder, m.discriminator)
        return {n: _grads(getattr(m, n)) for n in ("encoder", "decoder", "discriminator")}

    base = grads_of(model)
    # Change only the discriminator's logit head: L_GAN changes, Dis_l (and so L_llike) does not.
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.discriminator.head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    other = grads_of(changed)
    for g, h in zip(base["encoder"], other["encoder"], strict=True):
        assert torch.equal(g, h), "the encoder received gradient from L_GAN"
    assert any(not torch.equal(g, h) for g, h in zip(base["decoder"], other["decoder"], strict=True))

    # The discriminator's gradient is the one of L_GAN alone, whatever the reconstruction weights.
    heavy = LossSettings(beta=5.0, gamma=3.0)
    for p in model.parameters():
        p.grad = None
    obj = vaegan_objectives(model.encoder, model.decoder, model.discriminator, x, eps, z_prior, heavy)
    backward_passes(obj, model.encoder, model.decoder, model.discriminator)
    for g, h in zip(_grads(model.discriminator), base["discriminator"], strict=True):
        assert torch.equal(g, h), "the discriminator received gradient from L_llike or L_prior"


def test_vae_objective_trains_encoder_and_decoder_only() -> None:
    model, x, eps, _ = _setup()
    settings = LossSettings(objective="vae")
    objectives = vae_objectives(model.encoder, model.decoder, x, eps, settings)
    backward_passes(objectives, model.encoder, model.decoder, None)
    assert all(p.grad is None for p in model.discriminator.parameters())
    mu, logvar = model.encoder(x)
    logits = model.decoder(reparameterize(mu, logvar, eps))
    expected_obj = kl_prior(mu, logvar) + pixel_recon(logits, x, "bce")
    expected = torch.autograd.grad(expected_obj, list(model.encoder.parameters()))
    for g, e in zip(_grads(model.encoder), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", ["seed", "default"])
def test_train_step_runs_without_inplace_errors_and_lowers_the_losses(preset: str) -> None:
    model, _, _, _ = _setup(preset=preset)
    x = (torch.rand(16, 1, 28, 28) > 0.7).float()  # a fixed batch to overfit
    opts = {
        n: torch.optim.Adam(getattr(model, n).parameters(), lr=1e-3)
        for n in ("encoder", "decoder", "discriminator")
    }
    modules = StepModules(model.encoder, model.decoder, model.discriminator, opts)
    settings = LossSettings(equilibrium=True)
    gen = torch.Generator().manual_seed(0)
    first = last = None
    for _ in range(15):
        noise = torch.randn(2, 16, model.args.latent_dim, generator=gen)
        metrics = train_step(modules, x, noise[0], noise[1], settings, contextlib.nullcontext)
        first = metrics if first is None else first
        last = metrics
    assert torch.isfinite(last).all()
    assert last[2] < first[2]  # the pixel reconstruction loss went down
