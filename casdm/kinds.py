"""The model-kind interface the shared trainer and sampler use, and CASDM's own kind.

``casdm`` covers the method and its loss ablations (``mse``, ``ca_mse``, ``ca_mse+ca_sp``): the
same SPADE U-Net, data, steps, seed and sampler, so differences between them are the loss.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from casdm.losses import ca_mse, ca_sp, class_pixel_weights, frozen_copy, mse, predict_x0
from casdm.pipeline import CASDMPipeline, to_onehot
from casdm.registry import register
from casdm.schedulers import make_scheduler
from casdm.unet import SPADEUNet, unet_from_preset


class ModelKind:
    """What the shared trainer needs from a model family. Subclass it and ``register`` a name."""

    losses: tuple[str, ...] = ()
    find_unused_parameters = False  # DDP: True when a step may leave parameters out of the graph
    options_schema = None  # a pydantic model for ``training.options``; None: the kind takes none

    def __init__(self, params, name: str, table):
        self.params, self.name, self.table = params, name, table
        self.entry = params.models[name]
        self.recipe = self.entry.training
        self.options = self._parse_options()

    def _parse_options(self):
        """Validate ``training.options`` against the kind's schema; an error names the key."""
        where = f"params.yaml: models.{self.name}.training.options"
        if self.options_schema is None:
            if self.recipe.options:
                raise ValueError(f"{where}: kind {self.entry.kind!r} takes no options, got {sorted(self.recipe.options)}")
            return None
        try:
            return self.options_schema(**self.recipe.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{where}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None

    def prepare(self, data) -> None:
        """Learn what the kind needs from the training split before ``build`` (the map generator fits
        its prompt vocabulary here); ``data`` is the training ``PreparedDataset``."""

    def build(self) -> torch.nn.Module:
        """The trainable network (parameters with ``requires_grad`` are optimised and averaged by EMA)."""
        raise NotImplementedError

    def loss(self, model, images, labels, g: torch.Generator, accelerator) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch and its named terms (logged separately)."""
        raise NotImplementedError

    def on_step(self, step: int, model) -> bool:
        """Called before each step with the unwrapped model (e.g. to start a training stage).
        Return True when the trainable weights were replaced, so the EMA restarts from them."""
        return False

    def save_state(self, folder: Path) -> None:
        """Extra state to checkpoint beside model/optimizer/EMA."""

    def load_state(self, folder: Path, model) -> None:
        """Restore what ``save_state`` wrote."""

    def pipeline(self, model):
        """A sampling pipeline around the (unwrapped) model, with the sampler from params.yaml."""
        raise NotImplementedError

    def preview(self, pipe, labels: torch.Tensor, steps: int, guidance: float, generator) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] for the training sample grid: what the model makes of these maps."""
        return pipe(labels, steps, guidance, generator=generator, output_type="pt").images

    def export(self, model, folder: Path) -> None:
        """Write the pipeline for ``model`` (the trainer swaps the EMA weights in first)."""
        self.pipeline(model).save_pretrained(folder)

    def export_raw(self, model, folder: Path) -> None:
        """Write the raw (non-EMA) weights beside the pipeline."""
        model.save_pretrained(folder / "unet_raw")

    def load_pipeline(self, folder: Path, use_ema: bool = True):
        """The exported pipeline, with the sampler named in params.yaml (no retraining to change it)."""
        raise NotImplementedError


@register("casdm")
class CASDMKind(ModelKind):
    """SPADE U-Net; loss ``mse``, ``ca_mse`` or ``ca_mse+ca_sp`` (the method)."""

    losses = ("mse", "ca_mse", "ca_mse+ca_sp")
    learned_variance = False

    def __init__(self, params, name, table):
        super().__init__(params, name, table)
        self.noise_scheduler = make_scheduler("ddpm", params.diffusion, learned_variance=self.learned_variance)
        self.frozen: torch.nn.Module | None = None
        self.boost = self.class_boost()

    def class_boost(self) -> torch.Tensor:
        boost = torch.ones(self.table.num_classes)
        for cname, factor in self.recipe.ca_boost.items():
            try:
                boost[self.table.index(cname)] = factor
            except KeyError:
                raise ValueError(f"params.yaml: models.{self.name}.training.ca_boost: unknown class {cname!r}; "
                                 f"expected one of {self.table.names}") from None
        return boost

    def build(self) -> SPADEUNet:
        p = self.params
        return unet_from_preset(p.presets[p.train.preset], p.data.resolution, self.table.num_classes,
                                learn_sigma=self.learned_variance)

    # ---- training -------------------------------------------------------------------------------
    def noisy_batch(self, model, images, labels, g, accelerator):
        """Shared by every SPADE-U-Net loss: map dropout, noise, timesteps, one forward pass."""
        sched, b = self.noise_scheduler, images.shape[0]
        onehot = to_onehot(labels, self.table.num_classes)
        cond = onehot
        if self.recipe.drop_rate > 0:  # classifier-free guidance: the whole map zeroed
            keep = (torch.rand(b, generator=g) >= self.recipe.drop_rate).float().to(images.device)
            cond = onehot * keep.view(-1, 1, 1, 1)
        noise = torch.randn(images.shape, generator=g).to(images.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g).to(images.device)
        x_t = sched.add_noise(images, noise, t)
        target = sched.get_velocity(images, noise, t) if sched.config.prediction_type == "v_prediction" else noise
        with accelerator.autocast():
            out = model(x_t, t, cond).sample
        return dict(onehot=onehot, cond=cond, noise=noise, t=t, x_t=x_t, target=target, out=out)

    def on_step(self, step: int, model) -> bool:
        if self.recipe.loss == "ca_mse+ca_sp" and self.frozen is None and step >= self.recipe.sp_start_step:
            self.frozen = frozen_copy(model)  # stage 2 starts here
        return False

    def loss(self, model, images, labels, g, accelerator):
        r = self.noisy_batch(model, images, labels, g, accelerator)
        eps = r["out"][:, : images.shape[1]]
        if self.recipe.loss == "mse":
            terms = {"mse": mse(eps, r["target"], ignore=labels == 255)}
            return terms["mse"], terms
        weights = class_pixel_weights(r["onehot"], variant=self.recipe.ca_variant, boost=self.boost.to(images.device),
                                      alpha=self.recipe.ca_alpha)
        terms = {"ca_mse": ca_mse(eps, r["target"], r["onehot"], weights=weights)}
        loss = terms["ca_mse"]
        if self.recipe.loss == "ca_mse+ca_sp" and self.frozen is not None:
            x0_hat = predict_x0(self.noise_scheduler, r["x_t"], eps, r["t"])
            with accelerator.autocast():
                terms["ca_sp"] = ca_sp(self.frozen, images, x0_hat, r["cond"], weights, self.noise_scheduler,
                                       g.manual_seed(g.initial_seed() + 1), levels=self.recipe.sp_levels)
            loss = loss + self.recipe.lambda_sp * terms["ca_sp"]
        return loss, terms

    def save_state(self, folder: Path) -> None:
        if self.frozen is not None:
            torch.save(self.frozen.state_dict(), folder / "frozen.pt")

    def load_state(self, folder: Path, model) -> None:
        if (folder / "frozen.pt").exists():
            self.frozen = frozen_copy(model)
            self.frozen.load_state_dict(torch.load(folder / "frozen.pt", map_location=model.device))

    # ---- sampling -------------------------------------------------------------------------------
    def pipeline(self, model) -> CASDMPipeline:
        s = self.entry.sampling
        pipe = CASDMPipeline(model, make_scheduler(s.scheduler, self.params.diffusion, model.config.learn_sigma))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_pipeline(self, folder: Path, use_ema: bool = True) -> CASDMPipeline:
        folder = Path(folder)
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"{folder}: no trained pipeline; run `dvc repro train@{self.name}` first")
        unet = SPADEUNet.from_pretrained(folder / ("unet" if use_ema else "unet_raw"))
        return self.pipeline(unet).to("cuda" if torch.cuda.is_available() else "cpu")
