"""The model of params.yaml, one section a class: every stage reads its section through ``load_params``.

Why pydantic with ``extra="forbid"``: a typo in params.yaml (``resolutoin: 64``) must fail at once,
naming the key, instead of silently training with a default. Why no defaults here: params.yaml is
the only place a value lives; a second set of defaults in code drifts from it unseen. Every field is
required, and the model checks types, ranges and unknown keys. A model's ``training:`` block is
validated by its kind's own options model (``benchmark/kinds/base.py``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator


MAX_STEPS = 10_000_000  # optimisation steps (the paper's 343,500 x ~30): more is a typo that would run for years
MAX_TIMESTEPS = 10_000  # diffusion timesteps: 10**9 would allocate its schedule's tensors (4 GB each)
MAX_BATCH = 4096


class Section(BaseModel):
    # no inf or NaN anywhere: `guidance_scale: .inf` passed the check and sampled black images
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def describe(err: dict) -> tuple[str, str]:
    """A pydantic error as (dotted key, what was wrong): the one wording of every refusal."""
    return ".".join(str(p) for p in err["loc"]), "unknown key" if err["type"] == "extra_forbidden" else err["msg"]


# YAML 1.1 reads a bare `no` as false: a precision written `no` is "no", not False
Precision = Annotated[Literal["no", "bf16", "fp16", "auto"], BeforeValidator(lambda v: "no" if v is False else v)]


# ---------------------------------------------------------------------------------------- data
class SyntheticConfig(Section):
    videos: int = Field(ge=1, le=17, description="videos, named after CholecSeg8K's 17")
    clips_per_video: int = Field(ge=1, le=20)
    frames_per_clip: int = Field(ge=1, le=80)
    width: int = Field(ge=16, le=1024)
    height: int = Field(ge=16, le=1024)
    seed: int
    quirks: bool = Field(description="write the real files' quirks (border, strays, RGBA masks)")


class SplitConfig(Section):
    kind: Literal["video", "random"]
    test_videos: list[int | str]
    val_videos: list[int | str]
    exclude_videos: list[int | str] = Field(description="videos in no split (video split only): a screen's copy "
                                            "holds the leaderboard's test videos out of everything it sees")
    test_fraction: float = Field(gt=0, lt=1, description="random split only")
    val_fraction: float = Field(ge=0, lt=1, description="random split only")
    seed: int


class DataConfig(Section):
    source: Literal["synthetic", "cholecseg8k", "folder"]
    root: str = Field(description="dataset root; the synthetic stage writes here")
    resolution: int = Field(ge=16, le=1024, description="square side after resizing")
    synthetic: SyntheticConfig
    split: SplitConfig

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError("must be a multiple of 8 (U-Net down-sampling)")
        return v


# ------------------------------------------------------------------------------------- models
class UNetPreset(Section):
    """Widths of the SPADE U-Net (casdm.md section 1)."""

    base_channels: int = Field(ge=8)
    channel_mult: list[int] = Field(min_length=1)
    num_res_blocks: int = Field(ge=1)
    attention_resolutions: list[int]
    head_channels: int = Field(ge=4)
    spade_hidden: int = Field(ge=4, description="hidden width of the SPADE branches")
    dropout: float = Field(ge=0, lt=1)
    gradient_checkpointing: bool


class SamplingRecipe(Section):
    """What ``sample@<model>`` depends on: changing it re-samples without retraining."""

    scheduler: Literal["ddpm", "ddim", "dpmsolver++"]
    num_inference_steps: int = Field(ge=1, le=1000)
    guidance_scale: float = Field(ge=0, le=100)


class ModelEntry(Section):
    """One benchmarked model: a registered kind, its training block, its sampler."""

    kind: str = Field(description="registry name: casdm, sdm, controlnet, ...")
    role: str = Field(description="method | ablation | baseline")
    training: dict[str, Any] = Field(description="what train@<model> depends on: `loss` and the kind's options, "
                                     "validated by the kind's options model when the kind is made")
    sampling: SamplingRecipe


# ------------------------------------------------------------------------------------- stages
class DiffusionConfig(Section):
    num_train_timesteps: int = Field(ge=10, le=MAX_TIMESTEPS)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float = Field(gt=0)
    beta_end: float = Field(gt=0, lt=1)
    prediction_type: Literal["epsilon", "v_prediction"]
    zero_snr: bool = Field(description="rescale the betas to zero terminal SNR, trailing timestep spacing")
    snr_gamma: float | None = Field(gt=0, description="min-SNR-gamma timestep weighting of every model's "
                                    "denoising loss (null = off: the losses as published)")
    offset_noise: float = Field(ge=0, le=1, description="offset-noise strength (0 = off)")
    release_pair: bool = Field(description="the released CASDM's schedule pair: train epsilon on scaled-linear "
                               "zero-SNR betas, sample on linear zero-SNR betas, alpha_bar_T clamped to 2^-24 "
                               "(casdm/schedulers.py); false: one schedule for training and sampling")

    @model_validator(mode="after")
    def _zero_snr_needs_v(self):
        if self.release_pair and (self.prediction_type, self.beta_schedule, self.zero_snr) != (
                "epsilon", "scaled_linear", True):
            raise ValueError("release_pair: true is the released run's pair: it needs prediction_type: epsilon, "
                             "beta_schedule: scaled_linear and zero_snr: true (got "
                             f"{self.prediction_type}, {self.beta_schedule}, zero_snr {self.zero_snr})")
        if self.zero_snr and self.prediction_type != "v_prediction" and not self.release_pair:
            raise ValueError("zero_snr: true needs prediction_type: v_prediction (at zero SNR the last step's "
                             "input is pure noise: epsilon gives no image, x0 = (x_t - sqrt(1-abar) eps) / 0), "
                             "or release_pair: true, which clamps alpha_bar_T to 2^-24 as the release's samplers need")
        return self


class TrainConfig(Section):
    preset: str
    steps: int = Field(ge=1, le=MAX_STEPS)
    batch_size: int = Field(ge=1, le=MAX_BATCH)
    lr: float = Field(gt=0, le=1)
    warmup_steps: int = Field(ge=0, le=MAX_STEPS)
    weight_decay: float = Field(ge=0, le=1)
    adam_betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]
    grad_clip: float = Field(gt=0)
    ema_decay: float = Field(ge=0, lt=1)
    mixed_precision: Precision
    augment: bool
    seeds: list[int] = Field(min_length=1, description="training seeds: each model is trained, sampled and evaluated "
                             "once per seed (dvc.yaml's matrix); a row is the mean over its seeds")
    seed: int | None = Field(None, description="this run's seed, one of seeds (set by a stage's --seed); "
                             "unset: the first of seeds")

    @model_validator(mode="after")
    def _seed_of_seeds(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds {self.seeds}: a seed is listed twice; expected distinct seeds")
        if self.seed is None:
            object.__setattr__(self, "seed", self.seeds[0])
        elif self.seed not in self.seeds:
            raise ValueError(f"seed {self.seed} is not one of train.seeds {self.seeds}")
        return self

    def run_config(self) -> dict:
        """What determines one seed's training run (hashed to resume it and to find its MLflow run):
        the other seeds of the list are not part of it, so adding a seed resumes or reuses the others."""
        return self.model_dump(exclude={"seeds"})


class RuntimeConfig(Section):
    """How a training run is carried out, not what it learns: neither the resume hash nor the training
    stages' params include it, so changing how often to log re-trains nothing."""

    checkpoint_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    sample_every: int = Field(ge=1, description="sample grid logged to MLflow every N steps")
    num_workers: int = Field(ge=0)
    num_processes: int = Field(ge=1, description="above 1, `casdm train` runs itself under `accelerate launch` "
                               "with this many processes (one per GPU; gloo on CPUs); train.batch_size stays the "
                               "global batch, so the result does not depend on it")


class SampleConfig(Section):
    batch_size: int = Field(ge=1)
    num_processes: int = Field(ge=1, description="above 1, `casdm sample` runs under `accelerate launch`: "
                               "the maps are split across processes, rank 0 writes the one folder")
    max_images: int | None = Field(ge=1, description="cap on test maps sampled (null = all)")
    train_maps: int | None = Field(ge=0, description="training maps turned into images for the downstream "
                                   "real + synthetic variant (null = all, 0 = none)")
    train_selection: Literal["rare_first", "random"] = Field(
        description="which training maps: those holding rare classes first, or a random draw")
    seed: int
    use_ema: bool
    mixed_precision: Precision = Field(
        description="autocast while sampling: no | bf16 | fp16 | auto (bf16 on a GPU that has it, else no)")


EXTRACTOR_HELP = "auto | inception | efficientnet_lite0 | efficientnet_lite0:blocks.N (N = 0..6)"


def check_extractor(v: str) -> str:
    base, _, layer = v.partition(":")
    ok = v in ("auto", "inception", "efficientnet_lite0") or (
        base == "efficientnet_lite0" and layer in {f"blocks.{i}" for i in range(7)})
    if not ok:
        raise ValueError(f"unknown feature extractor {v!r}; expected {EXTRACTOR_HELP}")
    return v


class FidConfig(Section):
    """FID/KID of the test-map samples against the real test images (clean-fid, "clean" mode)."""

    extractor: str = Field(description=EXTRACTOR_HELP)
    offline_extractor: str = Field(description="what `auto` uses without Inception")
    inception_weights: str | None = Field(description="local inception-2015-12-05.pt (offline GPU boxes)")
    inception_sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$",
                                         description="the Inception weights' SHA-256; another file is refused")
    batch_size: int = Field(ge=1)

    @field_validator("extractor")
    @classmethod
    def _extractor(cls, v: str) -> str:
        return check_extractor(v)

    @field_validator("offline_extractor")
    @classmethod
    def _offline(cls, v: str) -> str:
        if not v.startswith("efficientnet_lite0"):
            raise ValueError(f"must be an offline extractor (efficientnet_lite0[:blocks.N]), got {v!r}")
        return check_extractor(v)


class SegmenterRecipe(Section):
    """One segmentation-models-pytorch training recipe (cross-entropy, AdamW, flips)."""

    encoder_weights: Literal["none", "efficientnet_lite0", "imagenet"]
    encoder_files: dict[Literal["segformer", "unet"], str] = Field(
        description="imagenet weights of each segmenter's encoder from a local file (smp's published state "
                    "dict, .pth or .safetensors) on a box that cannot download them; {} downloads")
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)


class SemanticConfig(SegmenterRecipe):
    """The judge: trained once on the real training split, run on every model's test-map samples."""

    segmenter: Literal["segformer", "unet"]
    seed: int


class DownstreamConfig(SegmenterRecipe):
    """Real only vs real + each model's synthetic pairs: the same step budget, several seeds."""

    segmenters: list[Literal["segformer", "unet"]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    real_fraction: float = Field(gt=0, le=1, description="share of the real training clips every row's segmenters "
                                 "see (whole clips, nested across fractions, fixed by subset_seed): a data-scarce "
                                 "real set is where synthetic data can show a gain")
    subset_seed: int


class BootstrapConfig(Section):
    """Intervals of the image scores: resamples of the test set by its unit of independence (the same
    for every model)."""

    resamples: int = Field(ge=2)
    unit: Literal["clip", "video", "frame"] = Field(description="what a resample draws with replacement: whole "
                                                    "clips (frames of one clip are near copies), videos, or frames")
    seed: int
    level: float = Field(gt=0, lt=1, description="coverage of every interval (also the seeds' t intervals)")


class EvaluateConfig(Section):
    fid: FidConfig
    prdc_k: int = Field(ge=1, description="nearest neighbours for precision/recall/density/coverage")
    bootstrap: BootstrapConfig
    semantic: SemanticConfig
    downstream: DownstreamConfig


class LeaderboardConfig(Section):
    primary: str
    sort: Literal["asc", "desc"]
    ladder: list[str] = Field(min_length=2, description="the ablation ladder, first rung to the method: each "
                              "step is compared with the one before")


OBJECTIVES = {  # name -> the direction it is good in; computed on the study's evaluation maps
    "semantic_miou": "maximize", "rare_semantic_miou": "maximize", "fid": "minimize", "kid": "minimize"}
SEARCHABLE = ("lambda_sp", "ca_variant", "ca_alpha", "ca_boost", "sp_start_fraction", "sp_levels")


class SearchParam(Section):
    """One dimension of the search space (Optuna ``suggest_*``)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None  # optional by kind: a categorical has choices, a number low/high
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs `choices`")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError(f"a {self.type} parameter needs low < high (got low={self.low}, high={self.high})")
        elif self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0 (got {self.low})")
        return self


class StudyConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="the models: entry whose training block is tuned")
    n_trials: int = Field(ge=1, description="finished (complete or pruned) trials, all workers together")
    storage: str | None = Field(description="Optuna storage URL, journal:<file>, or null = "
                                "sqlite:///studies/<name>.db")
    directions: list[Literal["maximize", "minimize"]]
    objectives: list[str] = Field(min_length=1)
    sampler: Literal["tpe", "nsga2", "random"]
    pruner: Literal["median", "hyperband", "none"]
    seed: int
    train_steps: int | None = Field(ge=1, description="training steps per trial (null = train.steps)")
    report_every: int = Field(ge=1, description="steps between intermediate scores (pruning)")
    eval_split: Literal["val", "test"] = Field(description="maps the objectives are computed on")
    allow_test_split: bool = Field(description="eval_split: test is refused unless true (tuning on test maps "
                                   "biases every leaderboard number of the tuned model)")
    eval_maps: int | None = Field(ge=2, description="cap on evaluation maps (null = the whole split)")
    search_space: dict[str, SearchParam]

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.objectives) != len(self.directions):
            raise ValueError(f"objectives ({len(self.objectives)}) and directions ({len(self.directions)}) "
                             "must have the same length")
        for name, direction in zip(self.objectives, self.directions):
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
            if direction != OBJECTIVES[name]:
                raise ValueError(f"objective {name!r} should be {OBJECTIVES[name]}d, not {direction}d")
        if self.eval_split == "test" and not self.allow_test_split:
            raise ValueError("eval_split: test tunes on the test maps the leaderboard scores (its numbers would be "
                             "biased); use val (data.split.val_videos), or set allow_test_split: true to do it anyway")
        for key in self.search_space:
            if key not in SEARCHABLE:
                raise ValueError(f"search_space: unknown parameter {key!r}; expected one of {list(SEARCHABLE)}")
        return self


class ReportConfig(Section):
    title: str


# ------------------------------------------------------------------------- map generator
class MapGenerateConfig(Section):
    """Which prompts the ``maps`` stage generates maps for, and which image model draws them."""

    prompts: Literal["train", "file"] = Field(description="train: prompts of random training maps; "
                                              "file: one prompt per line of prompt_file")
    prompt_file: str | None = Field(description="hand-written prompts, e.g. prompts/rare.txt")
    num: int = Field(ge=1, description="maps generated (file prompts are cycled through)")
    image_model: str = Field(description="the models: entry that turns the maps into images")
    batch_size: int = Field(ge=1)
    seed: int

    @model_validator(mode="after")
    def _file(self):
        if self.prompts == "file" and not self.prompt_file:
            raise ValueError("prompts: file needs prompt_file (a text file, one prompt per line)")
        return self


class MapMetricsConfig(Section):
    diversity_prompts: int = Field(ge=1, description="prompts whose maps are sampled several times")
    diversity_samples: int = Field(ge=2, description="maps per prompt for diversity")


class MapsConfig(Section):
    """The text-prompted map generator (casdm.md section 5): ``train-maps``, ``maps``, ``evaluate-maps``."""

    generator: ModelEntry = Field(description="the generator as a model entry: kind mapgen, its training block "
                                  "(validated by the kind: benchmark/kinds/mapgen.py) and its sampler")
    train: dict[str, Any] = Field(description="overrides of the train: section")
    generate: MapGenerateConfig
    metrics: MapMetricsConfig


class TrackingConfig(Section):
    uri: str = Field(description="overridden by MLFLOW_TRACKING_URI")
    experiment: str


class Params(Section):
    data: DataConfig
    presets: dict[str, UNetPreset]
    models: dict[str, ModelEntry]
    diffusion: DiffusionConfig
    train: TrainConfig
    runtime: RuntimeConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
    leaderboard: LeaderboardConfig
    study: StudyConfig
    report: ReportConfig
    tracking: TrackingConfig
    maps: MapsConfig

    @model_validator(mode="after")
    def _preset_exists(self):
        if self.train.batch_size % self.runtime.num_processes:
            raise ValueError(f"train.batch_size {self.train.batch_size} is the global batch: it must divide evenly "
                             f"among runtime.num_processes {self.runtime.num_processes}")
        if self.train.preset not in self.presets:
            raise ValueError(f"train.preset {self.train.preset!r} is not in presets {sorted(self.presets)}")
        depth = len(self.presets[self.train.preset].channel_mult) - 1  # the U-Net halves the image this often
        if self.data.resolution % 2 ** depth:
            raise ValueError(f"data.resolution {self.data.resolution}: preset {self.train.preset!r} halves it "
                             f"{depth} times (channel_mult {self.presets[self.train.preset].channel_mult}); expected a "
                             f"multiple of {2 ** depth}")
        levels = self.maps.generator.training.get("block_out_channels")
        if isinstance(levels, list) and len(levels) > 1 and self.data.resolution % 2 ** (len(levels) - 1):
            raise ValueError(f"data.resolution {self.data.resolution}: the map generator halves it {len(levels) - 1} "
                             f"times (maps.generator.training.block_out_channels {levels}); expected a multiple of "
                             f"{2 ** (len(levels) - 1)}")
        if self.study.model not in self.models:
            raise ValueError(f"study.model {self.study.model!r} is not in models {sorted(self.models)}")
        unknown = [m for m in self.leaderboard.ladder if m not in self.models]
        if unknown:
            raise ValueError(f"leaderboard.ladder: {unknown} not in models {sorted(self.models)}")
        if self.maps.generate.image_model not in self.models:
            raise ValueError(f"maps.generate.image_model {self.maps.generate.image_model!r} is not in models "
                             f"{sorted(self.models)}")
        if self.maps.generator.kind != "mapgen":
            raise ValueError(f"maps.generator.kind: {self.maps.generator.kind!r}; the map generator is kind 'mapgen'")
        if "mapgen" in self.models:
            raise ValueError("models.mapgen: the name is the map generator's (maps: section); rename the model")
        try:
            TrainConfig(**{**self.train.model_dump(), **self.maps.train})
        except ValidationError as exc:
            key, msg = describe(exc.errors()[0])
            raise ValueError(f"maps.train.{key}: {msg}") from None
        return self
