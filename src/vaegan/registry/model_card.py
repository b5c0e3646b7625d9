"""The model card: the Markdown description of a registered version (what it is, its metrics, where
it comes from), built from the version's tags."""

from __future__ import annotations

from collections.abc import Mapping

from vaegan.registry.gate import parse_float


def _metric_line(label: str, tags: Mapping[str, str], *keys: str, digits: int = 4) -> str | None:
    texts = [tags.get(f"metric.{key}") for key in keys]
    if texts[0] is None:
        return None
    numbers = [parse_float(text) for text in texts]
    shown = ["n/a" if number is None else f"{number:.{digits}g}" for number in numbers]
    return f"| {label} | {' / '.join(shown)} |"


def model_card(role: str, io: str, tags: Mapping[str, str]) -> str:
    """The version's description (Markdown): what it is, its metrics and where it comes from."""
    purpose = {
        "decoder": "Generates 28x28 grey-scale digits from noise z ~ N(0, I), mapped through the "
        "model's latent prior (N(0, I) or the one fitted to the encoder means) inside the graph.",
        "encoder": "Maps 28x28 grey-scale digits to the mean and log-variance of q(z|x), and to the "
        "reconstruction decoded from that mean.",
    }[role]
    rows = [
        _metric_line("FID (prior samples) / recon / floor", tags, "fid", "fid_recon", "fid_floor"),
        _metric_line("precision / recall", tags, "precision", "recall"),
        _metric_line("PSNR dB / SSIM (reconstructions)", tags, "psnr", "ssim"),
        _metric_line("recon MSE / BCE", tags, "recon_mse", "recon_bce"),
        _metric_line("KL to the prior", tags, "kl"),
        _metric_line("evaluator test accuracy", tags, "evaluator_test_accuracy"),
        _metric_line("label consistency / sample class entropy", tags, "label_consistency",
                     "sample_class_entropy"),
    ]  # fmt: skip
    table = "\n".join(row for row in rows if row is not None)
    setting = (
        f"{tags.get('metric.num_samples', '?')} prior samples, "
        f"{tags.get('metric.feature_extractor', '?')} features, seed {tags.get('metric.seed', '?')}"
    )
    other = "encoder" if role == "decoder" else "decoder"
    return f"""# VAE-GAN {role} (Larsen et al. 2016), ONNX

{purpose} Runs with ONNX Runtime alone.

Graph: {io}. Trained with objective `{tags.get("objective", "?")}`.

## Evaluation ({setting})

| metric | value |
|---|---|
{table}

FID here uses the project's own feature extractor; compare it only with FIDs of the same setting.

## Provenance

- registration (pair_id, shared with the {other} of the same registration): {tags.get("pair_id")}
- training MLflow run: {tags.get("training_run_id")}
- git commit: {tags.get("git_commit")}
- data sha256: {tags.get("data_sha256")}
- checkpoint sha256: {tags.get("checkpoint_sha256")}
- DVC train stage md5: {tags.get("dvc_train_md5")}
- ONNX Runtime parity with PyTorch passed: {tags.get("parity_passed")}

## Limits

Trained on MNIST-like 28x28 digits only; not for other image domains.
"""
