"""Held-out metrics of a trained run with every held-out view rendered at a fraction of its size.

``ns-eval`` renders every held-out view at the dataparser's resolution. For a method whose
render is too slow for that on a CPU (vanilla NeRF's 8 x 256 MLPs at LLFF factor 8: minutes per
view on one thread) this evaluates **every** held-out view, each camera rescaled by
``image_scale`` (nerfstudio's ``Cameras.rescale_output_resolution``) and its ground truth
area-averaged to the rendered size, through nerfstudio's own
``Pipeline.get_average_image_metrics`` (the metrics ``ns-eval`` reports, the same model code).
The JSON says which scale and size were evaluated; PSNRs at different scales are not
comparable with each other or with ``ns-eval``'s.

    wcnerf-scaled-eval RUN --image-scale 0.25 --output-path m.json
    wcnerf-scaled-eval --load-config RUN/config.yml --image-scale 0.25 --output-path m.json
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, Optional, Sequence, Tuple

from wcnerf.bounds import Bounds, between
from wcnerf.tools.runs import RunArgs, run_tool

__all__ = ["rescale_view", "ScaledViews", "evaluate_scaled", "ScaledEval", "main"]


def rescale_view(camera: Any, batch: Dict[str, Any], scale: float) -> Tuple[Any, Dict[str, Any]]:
    """``(camera, batch)`` of one view at ``scale`` times its resolution: a rescaled copy of the
    camera, the image area-averaged (a mask resized nearest) to the camera's new size."""
    import torch

    if scale == 1.0:
        return camera, batch
    camera = copy.deepcopy(camera)
    camera.rescale_output_resolution(scale)
    h, w = int(camera.height.flatten()[0]), int(camera.width.flatten()[0])
    out = dict(batch)
    for key, value in batch.items():
        if not (torch.is_tensor(value) and value.dim() == 3 and value.shape[0] > 1 and value.shape[1] > 1):
            continue  # not an image (image_idx, ...)
        if key not in ("image", "mask"):
            raise ValueError(f"cannot rescale the evaluation batch's per-pixel entry {key!r} (only image and mask)")
        mode = "area" if key == "image" else "nearest"
        img = value.permute(2, 0, 1)[None].float()
        out[key] = torch.nn.functional.interpolate(img, size=(h, w), mode=mode)[0].permute(1, 2, 0).to(value.dtype)
    return camera, out


class ScaledViews:
    """A ``(camera, batch)`` loader (nerfstudio's fixed-indices eval loader) at ``scale``."""

    def __init__(self, loader: Any, scale: float) -> None:
        self.loader, self.scale = loader, scale

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[Any, Dict[str, Any]]]:
        for camera, batch in self.loader:
            yield rescale_view(camera, batch, self.scale)


IMAGE_SCALE = between(0, 1, strict_low=True)


def evaluate_scaled(config_path: Path, image_scale: float, output_path: Optional[Path] = None) -> Dict[str, Any]:
    """Mean (and std) of nerfstudio's image metrics over every held-out view at ``image_scale``."""
    from nerfstudio.utils.eval_utils import eval_setup

    if not IMAGE_SCALE.allows(image_scale):
        raise ValueError(f"--image-scale {image_scale}: must be {IMAGE_SCALE.describe()}")
    import yaml

    try:
        config, pipeline, checkpoint, step = eval_setup(Path(config_path))
    except yaml.YAMLError as e:
        raise ValueError(f"not a YAML run config ({' '.join(str(e).split())})") from e
    loader = pipeline.datamanager.fixed_indices_eval_dataloader
    cameras = pipeline.datamanager.eval_dataset.cameras
    full = (int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0]))
    metrics = pipeline.get_average_image_metrics(ScaledViews(loader, image_scale), "eval", get_std=True)
    small = rescale_view(cameras[0:1], {}, image_scale)[0]
    result = {
        "experiment_name": config.experiment_name,
        "method_name": config.method_name,
        "checkpoint": str(checkpoint),
        "step": step,
        "image_scale": image_scale,
        "views": len(loader),
        "full_resolution_hw": list(full),
        "evaluated_resolution_hw": [int(small.height.flatten()[0]), int(small.width.flatten()[0])],
        "results": metrics,
    }
    if output_path is not None:
        from wcnerf.atomic import write_json

        write_json(Path(output_path), result)
    return result


@dataclass
class ScaledEval(RunArgs):
    """Held-out metrics of a trained run with every held-out view rendered at a fraction of its
    size (nerfstudio's own metrics; compare PSNRs only at the same scale)."""

    image_scale: float = 0.25
    """Resolution scale of every held-out view, in (0, 1]."""
    output_path: Optional[Path] = None
    """JSON to write (atomically)."""

    BOUNDS: ClassVar[Bounds] = Bounds((("image_scale", IMAGE_SCALE),))

    def main(self) -> int:
        config_path = self.config_path()
        try:
            result = evaluate_scaled(config_path, self.image_scale, self.output_path)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {config_path}: {e}", file=sys.stderr)
            return 2
        print(json.dumps(result, indent=2))
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``wcnerf-scaled-eval``: parse the command line (``sys.argv`` unless ``argv``) and run."""
    return run_tool(ScaledEval, argv)


if __name__ == "__main__":
    sys.exit(main())
