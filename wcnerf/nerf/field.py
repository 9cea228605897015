"""The NeRF paper's MLP as a nerfstudio field: ``NeRFField`` plus raw-density noise.

nerfstudio's :class:`~nerfstudio.fields.vanilla_nerf_field.NeRFField` applies the density
activation inside its density head, so the NeRF reference's ``relu(raw + noise)`` (noise of
std 1 on the *raw* density during training, LLFF setting) cannot be had from outside. This
subclass keeps every building block of ``NeRFField`` (encodings, ``MLP`` trunk, heads) and
changes three things:

* the density head is linear; the activation (``relu`` as in the paper, or nerfstudio's
  ``softplus``) is applied after adding ``N(0, density_noise_std^2)`` noise in training mode;
* an optional ``feature_linear`` (W -> W, no activation) between the trunk and the view
  head, as in the reference network (``feature_linear`` then ``views_linears``);
* the view direction fed to the direction encoding can come from
  ``ray_samples.metadata["viewdirs"]`` (used by the model in NDC mode, where the sampled rays
  are NDC rays but the reference conditions colour on the normalised *world* direction).

Without autograd (evaluation renders) the same network runs a leaner path, equal up to float
rounding: activations in place (:func:`mlp_inference`), and the view layer's direction part
applied once per ray (its weight's direction columns times the per-ray direction encoding)
instead of concatenating the encoding to every sample's feature. Training keeps nerfstudio's
forward, whose layer outputs the layer-wise analysis' hooks see.

With ``base_mlp_num_layers=8, base_mlp_layer_width=256, skip_connections=(5,),
head_mlp_num_layers=1, head_mlp_layer_width=128, feature_layer=True`` the layer list is the
reference's: 8 x 256 trunk with the input re-injected before the 6th layer (reference
``skips=[4]`` concatenates *after* the 5th layer; nerfstudio's ``MLP`` concatenates *before*
layer ``i``, hence ``5``), a density ``Linear(256, 1)``, ``feature_linear``, one 128-wide view
layer, ``Linear(128, 3)`` + sigmoid: 12 ``nn.Linear`` per field.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import Encoding
from nerfstudio.field_components.field_heads import DensityFieldHead, FieldHeadNames, RGBFieldHead
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.vanilla_nerf_field import NeRFField

__all__ = ["ENeRFField", "DensityActivation", "mlp_inference"]

DensityActivation = Literal["relu", "softplus"]


def _activate_(act: Optional[nn.Module], x: Tensor) -> Tensor:
    """``act(x)``, in place for ReLU (x is a buffer nobody else holds)."""
    if act is None:
        return x
    return x.relu_() if isinstance(act, nn.ReLU) else act(x)


def mlp_inference(mlp: MLP, x: Tensor, first_out: Optional[Tensor] = None) -> Tensor:
    """nerfstudio's ``MLP.pytorch_fwd`` for use without autograd: the same values, with the
    activations applied in place instead of into a new buffer per layer. ``first_out``: the
    first layer's output when the caller computed it (pre-activation)."""
    layers = mlp.layers
    n = len(layers)
    h = x
    for i, layer in enumerate(layers):
        if i == 0 and first_out is not None:
            h = first_out
        else:
            if i in mlp._skip_connections:
                h = torch.cat([x, h], -1)
            h = layer(h)
        if i < n - 1:
            h = _activate_(mlp.activation, h)
    return _activate_(mlp.out_activation, h)


class ENeRFField(NeRFField):
    """``NeRFField`` with noise on the raw density and the reference's feature layer.

    Args:
        position_encoding, direction_encoding: as for ``NeRFField``.
        base_mlp_num_layers, base_mlp_layer_width, skip_connections: trunk.
        head_mlp_num_layers, head_mlp_layer_width: view-dependent head.
        feature_layer: add the reference's ``feature_linear`` (W -> W, no activation).
        density_noise_std: std of the Gaussian noise added to the raw density in training
            mode (0 disables it; never applied in eval mode).
        density_activation: ``"relu"`` (NeRF paper) or ``"softplus"`` (nerfstudio default).
    """

    lean_inference: bool = True
    """Without autograd, run the lean path (module docstring); False runs the training forward
    (what ``scripts/bench_step.py --ab`` compares against)."""

    def __init__(
        self,
        position_encoding: Encoding,
        direction_encoding: Encoding,
        base_mlp_num_layers: int = 8,
        base_mlp_layer_width: int = 256,
        head_mlp_num_layers: int = 1,
        head_mlp_layer_width: int = 128,
        skip_connections: Tuple[int, ...] = (5,),
        feature_layer: bool = True,
        density_noise_std: float = 0.0,
        density_activation: DensityActivation = "relu",
    ) -> None:
        bad = [i for i in skip_connections if not 0 < i < base_mlp_num_layers - 1]
        if bad:  # nerfstudio's MLP builds no input room for a skip into layer 0 or the last layer
            raise ValueError(
                f"skip_connections {tuple(skip_connections)}: each must be in 1..{base_mlp_num_layers - 2} "
                f"for a {base_mlp_num_layers}-layer trunk"
            )
        super().__init__(
            position_encoding=position_encoding,
            direction_encoding=direction_encoding,
            base_mlp_num_layers=base_mlp_num_layers,
            base_mlp_layer_width=base_mlp_layer_width,
            head_mlp_num_layers=head_mlp_num_layers,
            head_mlp_layer_width=head_mlp_layer_width,
            skip_connections=tuple(skip_connections),  # type: ignore[arg-type]
            field_heads=(RGBFieldHead,),
        )
        width = self.mlp_base.get_out_dim()
        # Linear density head; the activation is applied in get_density, after the noise.
        self.field_output_density = DensityFieldHead(in_dim=width, activation=None)
        self.feature_linear: Optional[nn.Linear] = nn.Linear(width, width) if feature_layer else None
        if density_activation not in ("relu", "softplus"):
            raise ValueError(f"density_activation must be 'relu' or 'softplus', got {density_activation!r}")
        self.density_activation = density_activation
        self.density_noise_std = float(density_noise_std)

    def _activate(self, raw: Tensor) -> Tensor:
        return torch.relu(raw) if self.density_activation == "relu" else nn.functional.softplus(raw)

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        if self.spatial_distortion is not None:
            positions = self.spatial_distortion(positions)
        encoded = self.position_encoding(positions)
        if self._lean(self.mlp_base):
            base_mlp_out = mlp_inference(self.mlp_base, encoded)
        else:
            base_mlp_out = self.mlp_base(encoded)
        raw = self.field_output_density(base_mlp_out)
        if self.training and self.density_noise_std > 0:
            raw = raw + torch.randn_like(raw) * self.density_noise_std
        return self._activate(raw), base_mlp_out

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        directions = None
        if ray_samples.metadata is not None:
            directions = ray_samples.metadata.get("viewdirs")
        if directions is None:
            directions = ray_samples.frustums.directions
        shape = (*density_embedding.shape[:-1], directions.shape[-1])
        feature = density_embedding if self.feature_linear is None else self.feature_linear(density_embedding)
        per_ray = directions.dim() >= 2 and (directions.shape[-2] == 1 or directions.stride(-2) == 0)
        if per_ray:
            # One direction per ray, broadcast over its samples (nerfstudio's RaySamples hold
            # stride-0 views): encode it once per ray, not once per sample; same values.
            encoded_dir = self.direction_encoding(directions[..., :1, :])
            # the head's first layer takes the direction per ray unless a later layer sees its input again
            if self._lean(self.mlp_head) and not self.mlp_head._skip_connections:
                mlp_out = self._head_per_ray(encoded_dir, feature)
                return {head.field_head_name: head(mlp_out) for head in self.field_heads}
            encoded_dir = encoded_dir.expand(*shape[:-1], encoded_dir.shape[-1])
        else:
            encoded_dir = self.direction_encoding(directions.expand(*shape))
        mlp_out = self.mlp_head(torch.cat([encoded_dir, feature], dim=-1))
        return {head.field_head_name: head(mlp_out) for head in self.field_heads}

    def _lean(self, mlp: MLP) -> bool:
        """Whether ``mlp`` runs the lean path: no autograd, switched on, nerfstudio's torch MLP."""
        return self.lean_inference and not torch.is_grad_enabled() and mlp.tcnn_encoding is None

    def _head_per_ray(self, encoded_dir: Tensor, feature: Tensor) -> Tensor:
        """The view head without autograd, its first layer split by input: ``W [d; f] + b =
        (W_d d + b) + W_f f`` with ``W_d d + b`` once per ray (``encoded_dir``: [..., 1, D])."""
        first = self.mlp_head.layers[0]
        weight = first.weight  # the conditioned weight (cached during a render)
        k = encoded_dir.shape[-1]
        h = nn.functional.linear(feature, weight[:, k:])
        h += nn.functional.linear(encoded_dir, weight[:, :k], first.bias)
        return mlp_inference(self.mlp_head, feature, first_out=h)
