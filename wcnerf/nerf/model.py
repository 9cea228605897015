"""E-NeRF: the NeRF paper's LLFF model with weight-conditioned MLPs, as a nerfstudio model.

One model class serves both methods: ``conditioning="equilibrate"`` is E-NeRF (Saratchandran,
Wang & Lucey, ECCV 2024: every ``nn.Linear`` of both fields equilibrated, in the orientation
the registry's ``equilibrate`` alias stands for; ``equilibrate-out`` / ``equilibrate-in`` name
one explicitly, and layers an orientation would freeze stay plain), ``"none"`` is the NeRF
baseline, and any other name of :mod:`wcnerf.conditioning` works the same way.

The network is the NeRF paper's (Mildenhall et al. 2020), built from nerfstudio parts:

* positional encoding ``sin/cos(2^k x)``, ``k = 0..L-1`` plus the input, L = 10 for positions
  and 4 for view directions (``NeRFEncoding`` scales its input by ``2 pi`` and spaces
  exponents linearly; the exponents are shifted by ``-log2(2 pi)`` so the frequencies are
  exactly the paper's ``2^k``);
* coarse and fine :class:`~wcnerf.nerf.field.ENeRFField` (8 x 256 trunk, input skip, density
  head, feature layer, 128-wide view layer, RGB head), Gaussian noise of std 1 on the raw
  density while training, ReLU density;
* 64 stratified coarse samples (``UniformSampler``) and 128 importance samples
  (``PDFSampler``); the fine field is evaluated on the sorted union (192 samples);
* LLFF in NDC (``metadata["llff"]["ndc"]``): world rays are mapped by
  :class:`wcnerf.plugin.ndc.NDCCollider` (:func:`wcnerf.data.ndc.ndc_rays` with the *training*
  intrinsics), then sampled linearly in the NDC parameter ``t`` in ``[0, 1]`` with the
  reference's ``|d_ndc|`` scaling of the intervals (implemented by normalising the NDC
  direction and sampling ``[0, |d_ndc|]``); colour is conditioned on the normalised *world*
  direction (``metadata["viewdirs"]``) as in the reference. Rays NDC cannot represent (looking
  sideways/backwards, possible for free viewer cameras) render as empty. Without NDC, samples lie between the metadata's near and far (or
  ``collider_params`` for data sets without LLFF metadata);
* the last sample's colour is the background (``background_color="last_sample"``), the
  nerfstudio counterpart of the reference's ``1e10`` last interval.

Outputs: ``rgb``, ``accumulation``, ``depth`` (fine; ``depth`` is the distance along the
world ray, also in NDC mode) and ``rgb_coarse``/``rgb_fine``/``accumulation_*``/``depth_*``
(``depth_*`` in sampling units). Metrics: ``psnr`` (train batches too), ``coarse_psnr``,
``ssim`` and ``lpips`` on images; LPIPS only when AlexNet's ImageNet weights are available
locally (see :func:`wcnerf.plugin.compat.build_lpips`), otherwise omitted with a warning.

The conditioning settings, the post-step callback, the layer-wise conditioning analysis and
the viewer's "Weight conditioning" panel are every conditioned model's
(:mod:`wcnerf.plugin.conditioned`); E-NeRF analyses both fields, logged as
``analysis/{coarse,fine}/<layer>/<metric>`` and ``analysis/{coarse,fine}/total/...``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.config_utils import to_immutable_dict
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps, misc

from wcnerf.nerf.field import DensityActivation, ENeRFField
from wcnerf.plugin.conditioned import AnalysedPart, ConditionedModel, ConditionedModelConfig
from wcnerf.plugin.ndc import NDCCollider

__all__ = ["ENeRFModel", "ENeRFModelConfig", "paper_encoding"]

_LOG2_2PI = math.log2(2.0 * math.pi)


def paper_encoding(num_frequencies: int) -> NeRFEncoding:
    """NeRF's ``gamma(x) = (x, sin(2^k x), cos(2^k x))_{k < L}`` with nerfstudio's NeRFEncoding."""
    return NeRFEncoding(
        in_dim=3,
        num_frequencies=num_frequencies,
        min_freq_exp=-_LOG2_2PI,
        max_freq_exp=num_frequencies - 1 - _LOG2_2PI,
        include_input=True,
    )


@dataclass
class ENeRFModelConfig(ConditionedModelConfig, ModelConfig):
    """NeRF (LLFF protocol) whose MLPs are weight-conditioned by ``conditioning``."""

    _target: Type = field(default_factory=lambda: ENeRFModel)
    enable_collider: bool = False
    """Unused by default: near/far come from the LLFF metadata (NDC: t in [0, 1])."""
    collider_params: Optional[Dict[str, float]] = to_immutable_dict({"near_plane": 2.0, "far_plane": 6.0})
    """Near/far for data sets without LLFF metadata."""
    num_coarse_samples: int = 64
    """Stratified samples per ray for the coarse field."""
    num_importance_samples: int = 128
    """Importance (PDF) samples per ray; the fine field sees coarse + importance samples."""
    base_mlp_num_layers: int = 8
    """Layers of the trunk MLP."""
    base_mlp_layer_width: int = 256
    """Width of the trunk MLP (and of the feature layer)."""
    skip_connections: Tuple[int, ...] = (5,)
    """Trunk layers that also receive the encoded input (5 = reference skips=[4])."""
    head_mlp_num_layers: int = 1
    """Layers of the view-dependent head."""
    head_mlp_layer_width: int = 128
    """Width of the view-dependent head."""
    feature_layer: bool = True
    """Reference feature layer (W -> W, linear) between trunk and view head."""
    position_frequencies: int = 10
    """Positional-encoding frequencies for positions (2^0 .. 2^(L-1))."""
    direction_frequencies: int = 4
    """Positional-encoding frequencies for view directions."""
    density_noise_std: float = 1.0
    """Std of Gaussian noise on the raw density while training (0: off)."""
    density_activation: DensityActivation = "relu"
    """Density activation after the noise."""
    background_color: Literal["random", "last_sample", "black", "white"] = "last_sample"
    """Background; last_sample is the counterpart of the reference's 1e10 last interval."""


class ENeRFModel(ConditionedModel, Model):
    """NeRF with conditioned coarse and fine fields (see the module docstring)."""

    config: ENeRFModelConfig

    def __init__(self, config: ENeRFModelConfig, **kwargs) -> None:
        self.field_coarse: Optional[ENeRFField] = None
        self.field_fine: Optional[ENeRFField] = None
        super().__init__(config=config, **kwargs)

    # ------------------------------------------------------------------ construction
    def populate_modules(self) -> None:
        super().populate_modules()
        cfg = self.config
        self.check_conditioning()

        meta = (self.kwargs.get("metadata") or {}).get("llff")
        self.llff: Optional[Dict[str, Any]] = dict(meta) if meta else None
        self.ndc = bool(self.llff and self.llff.get("ndc"))
        self.ndc_collider: Optional[NDCCollider] = None
        if self.ndc:
            assert self.llff is not None
            self.ndc_collider = NDCCollider(
                focal=self.llff["focal"], width=self.llff["width"], height=self.llff["height"],
                near=self.llff["near"], t_far=self.llff.get("far", 1.0),
            )

        position_encoding = paper_encoding(cfg.position_frequencies)
        direction_encoding = paper_encoding(cfg.direction_frequencies)
        fields = []
        for _ in range(2):
            f = ENeRFField(
                position_encoding=position_encoding,
                direction_encoding=direction_encoding,
                base_mlp_num_layers=cfg.base_mlp_num_layers,
                base_mlp_layer_width=cfg.base_mlp_layer_width,
                head_mlp_num_layers=cfg.head_mlp_num_layers,
                head_mlp_layer_width=cfg.head_mlp_layer_width,
                skip_connections=tuple(cfg.skip_connections),
                feature_layer=cfg.feature_layer,
                density_noise_std=cfg.density_noise_std,
                density_activation=cfg.density_activation,
            )
            fields.append(self.condition(f))
        self.field_coarse, self.field_fine = fields

        self.sampler_uniform = UniformSampler(num_samples=cfg.num_coarse_samples)
        self.sampler_pdf = PDFSampler(num_samples=cfg.num_importance_samples, include_original=True)

        self.renderer_rgb = RGBRenderer(background_color=cfg.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()
        self.rgb_loss = MSELoss()

        from torchmetrics.functional import structural_similarity_index_measure

        self.ssim = structural_similarity_index_measure
        self.setup_conditioning()  # LPIPS from local weights, the viewer's conditioning panel

    def analysis_parts(self) -> Dict[str, AnalysedPart]:
        assert self.field_coarse is not None and self.field_fine is not None
        return {"coarse": AnalysedPart("coarse field", self.field_coarse),
                "fine": AnalysedPart("fine field", self.field_fine)}

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        assert self.field_coarse is not None and self.field_fine is not None
        return {"fields": list(self.field_coarse.parameters()) + list(self.field_fine.parameters())}

    # ------------------------------------------------------------------ rays
    def _sampling_bundle(self, ray_bundle: RayBundle) -> Tuple[RayBundle, Optional[NDCCollider]]:
        """The bundle the samplers see (NDC or world, nears/fars set) and, in NDC mode, the
        collider that turns its depths into world distances (None in world mode)."""
        dirs = ray_bundle.directions
        world_dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if self.ndc_collider is not None:
            bundle = self.ndc_collider(ray_bundle)
            bundle.metadata["viewdirs"] = world_dirs  # colour is conditioned on the world direction
            return bundle, self.ndc_collider
        if self.llff is not None:
            near, far = float(self.llff["near"]), float(self.llff["far"])
        else:
            assert self.config.collider_params is not None
            near = float(self.config.collider_params["near_plane"])
            far = float(self.config.collider_params["far_plane"])
        ones = torch.ones_like(dirs[..., :1])
        nears = ray_bundle.nears if ray_bundle.nears is not None else ones * near
        fars = ray_bundle.fars if ray_bundle.fars is not None else ones * far
        bundle = RayBundle(
            origins=ray_bundle.origins,
            directions=world_dirs,
            pixel_area=ray_bundle.pixel_area,
            camera_indices=ray_bundle.camera_indices,
            nears=nears,
            fars=fars,
            metadata=dict(ray_bundle.metadata),
            times=ray_bundle.times,
        )
        return bundle, None

    # ------------------------------------------------------------------ forward
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:  # type: ignore[override]
        assert self.field_coarse is not None and self.field_fine is not None
        bundle, ndc = self._sampling_bundle(ray_bundle)

        samples_coarse = self.sampler_uniform(bundle)
        out_coarse = self.field_coarse(samples_coarse)
        weights_coarse = samples_coarse.get_weights(out_coarse[FieldHeadNames.DENSITY])
        rgb_coarse = self.renderer_rgb(rgb=out_coarse[FieldHeadNames.RGB], weights=weights_coarse)
        acc_coarse = self.renderer_accumulation(weights_coarse)
        depth_coarse = self.renderer_depth(weights_coarse, samples_coarse)

        samples_fine = self.sampler_pdf(bundle, samples_coarse, weights_coarse)
        out_fine = self.field_fine(samples_fine)
        weights_fine = samples_fine.get_weights(out_fine[FieldHeadNames.DENSITY])
        rgb_fine = self.renderer_rgb(rgb=out_fine[FieldHeadNames.RGB], weights=weights_fine)
        acc_fine = self.renderer_accumulation(weights_fine)
        depth_fine = self.renderer_depth(weights_fine, samples_fine)

        return {
            "rgb": rgb_fine,
            "accumulation": acc_fine,
            "depth": depth_fine if ndc is None else ndc.world_depth(depth_fine, bundle),
            "rgb_coarse": rgb_coarse,
            "rgb_fine": rgb_fine,
            "accumulation_coarse": acc_coarse,
            "accumulation_fine": acc_fine,
            "depth_coarse": depth_coarse,
            "depth_fine": depth_fine,
        }

    # ------------------------------------------------------------------ losses, metrics
    @staticmethod
    def _psnr(pred: Tensor, gt: Tensor) -> Tensor:
        mse = torch.mean((pred.detach() - gt) ** 2)
        return -10.0 * torch.log10(mse.clamp_min(1e-10))

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb_fine"].device)[..., :3]
        return {
            "psnr": self._psnr(outputs["rgb_fine"], image),
            "coarse_psnr": self._psnr(outputs["rgb_coarse"], image),
        }

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb_coarse"].device)
        coarse_pred, coarse_gt = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb_coarse"], pred_accumulation=outputs["accumulation_coarse"], gt_image=image
        )
        fine_pred, fine_gt = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb_fine"], pred_accumulation=outputs["accumulation_fine"], gt_image=image
        )
        loss_dict = {
            "rgb_loss_coarse": self.rgb_loss(coarse_gt, coarse_pred),
            "rgb_loss_fine": self.rgb_loss(fine_gt, fine_pred),
        }
        return misc.scale_dict(loss_dict, self.config.loss_coefficients)

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        device = outputs["rgb_fine"].device
        image = self.renderer_rgb.blend_background(batch["image"].to(device))[..., :3]
        rgb_coarse = outputs["rgb_coarse"].clamp(0.0, 1.0)
        rgb_fine = outputs["rgb_fine"].clamp(0.0, 1.0)

        acc = torch.cat(
            [colormaps.apply_colormap(outputs["accumulation_coarse"]), colormaps.apply_colormap(outputs["accumulation_fine"])],
            dim=1,
        )
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation_fine"])
        images = {"img": torch.cat([image, rgb_coarse, rgb_fine], dim=1), "accumulation": acc, "depth": depth}

        gt = torch.moveaxis(image, -1, 0)[None]
        pred = torch.moveaxis(rgb_fine, -1, 0)[None]
        metrics: Dict[str, float] = {
            "psnr": float(self._psnr(rgb_fine, image)),
            "coarse_psnr": float(self._psnr(rgb_coarse, image)),
            "ssim": float(self.ssim(pred, gt, data_range=1.0)),  # type: ignore[arg-type]
        }
        lpips = self.lpips_metric(device)
        if lpips is not None:
            with torch.no_grad():
                metrics["lpips"] = float(lpips(pred, gt))
                lpips.reset()
        return metrics, images
