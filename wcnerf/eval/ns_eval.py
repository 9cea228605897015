"""``ns-eval`` that also keeps each held-out view's metrics: ``python -m wcnerf.eval.ns_eval``.

nerfstudio's ``ns-eval`` computes PSNR / SSIM / LPIPS per evaluated image and writes only
their mean and std. The harness wants the per-image values too, so that an outlier view can be
found. This runs nerfstudio's own ``ns-eval`` command line (``nerfstudio.scripts.eval``, the
same arguments, the same ``--output-path`` JSON) and, on the loaded model instance only,
records what ``get_image_metrics_and_images`` returns for each image; they are written beside
the output as ``<output stem>.per_image.json``: one entry per evaluated view, in the eval
split's order, with its image file name.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["per_image_path", "main"]


def per_image_path(output_path: Path) -> Path:
    """Where the per-image metrics of an ``ns-eval --output-path`` JSON go."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.stem + ".per_image.json")


def _numbers(metrics: Dict[str, Any]) -> Dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            x = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[key] = x
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import tyro

    import nerfstudio.scripts.eval as ns_eval

    records: List[Dict[str, Any]] = []
    names: List[str] = []
    original_setup = ns_eval.eval_setup

    def eval_setup(*args: Any, **kwargs: Any):
        config, pipeline, checkpoint, step = original_setup(*args, **kwargs)
        dataset = getattr(pipeline.datamanager, "eval_dataset", None)
        names.extend(str(p) for p in getattr(getattr(dataset, "_dataparser_outputs", None), "image_filenames", []))
        model = pipeline.model
        compute = model.get_image_metrics_and_images

        def recording(outputs: Any, batch: Any):
            metrics, images = compute(outputs, batch)
            records.append(_numbers(metrics))
            return metrics, images

        model.get_image_metrics_and_images = recording  # this instance only
        return config, pipeline, checkpoint, step

    ns_eval.eval_setup = eval_setup
    cmd = tyro.cli(ns_eval.ComputePSNR, args=list(sys.argv[1:] if argv is None else argv))
    cmd.main()
    per_image = [{"image": names[i] if i < len(names) else None, **m} for i, m in enumerate(records)]
    per_image_path(cmd.output_path).write_text(json.dumps(per_image, indent=2), "utf8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
