"""Bad-input probe (issue 15): build broken LLFF scenes (copies of fern with one thing broken)
and broken meshes, feed them to the pure readers, and print a table of the outcomes: refused
with a clear message (our error type, message starting with the offending path), accepted with
a warning, accepted silently, or a traceback (any other exception). Not a test module. The
broken scenes are the catalogue in tests/support/broken_scenes.py (every case, in its order).

    .venv/bin/python tests/reliability_probe.py [--fern PATH] [--ns]

``--ns`` also runs ``ns-train`` on some of the broken scenes and ``--load-dir`` mistakes (about
a minute; through tests/support/ns_cases.py) and classifies their output the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.broken_scenes import BROKEN  # noqa: E402
from support.helpers import llff_scene  # noqa: E402
from support.tiny import NERF  # noqa: E402

from wcnerf.data.llff_scene import LLFFDataError, load_llff_scene  # noqa: E402
from wcnerf.shape.mesh import MeshLoadError, load_mesh  # noqa: E402


def _box(scale=1.0):
    return trimesh.creation.box(extents=[scale] * 3)


def _save(mesh, suffix):
    def make(path: Path) -> Path:
        path = path.with_suffix(suffix)
        mesh.export(path)
        return path
    return make


def _raw(data: bytes, suffix: str):
    def make(path: Path) -> Path:
        path = path.with_suffix(suffix)
        path.write_bytes(data)
        return path
    return make


def _spot_scaled(s):
    def make(path: Path) -> Path:
        from wcnerf.shape.train import DEFAULT_MESH

        m = trimesh.load(DEFAULT_MESH, force="mesh", process=False)
        m.apply_scale(s)
        path = path.with_suffix(".ply")
        m.export(path, encoding="binary")
        return path
    return make


def _cancelled():
    cube = trimesh.creation.box()
    return trimesh.Trimesh(cube.vertices, np.concatenate([cube.faces, cube.faces[:, ::-1]]), process=False)


MESH_CASES = {
    "cube": _save(_box(), ".obj"),
    "missing file": lambda p: p.with_suffix(".obj"),
    "empty file": _raw(b"", ".obj"),
    "random bytes .ply": _raw(bytes(range(256)) * 8, ".ply"),
    "text garbage .obj": _raw(b"hello\nworld\n", ".obj"),
    "vertices only (point cloud)": _raw(b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", ".obj"),
    "NaN vertex": _raw(b"v 0 0 0\nv nan 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\nf 1 2 4\nf 2 3 4\n", ".obj"),
    "face index out of range": _raw(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                    b"property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                    b"end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", ".ply"),
    "collinear triangle": _raw(b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", ".obj"),
    "single triangle": _raw(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", ".obj"),
    "flat square": _raw(b"v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3\nf 1 3 4\n", ".obj"),
    "cube + its inside-out copy (no volume)": _save(_cancelled(), ".obj"),
    "sphere with a hole": _save(trimesh.Trimesh(trimesh.creation.icosphere(3).vertices,
                                                trimesh.creation.icosphere(3).faces[5:], process=False), ".ply"),
    "spot at 1e-9": _spot_scaled(1e-9),
    "spot at 1e-7": _spot_scaled(1e-7),
    "spot at 1e-6": _spot_scaled(1e-6),
    "spot at 1e9": _spot_scaled(1e9),
    "a folder": lambda p: (p.mkdir(), p)[1],
}


def classify(fn):
    """(outcome, detail) of calling fn."""
    try:
        result = fn()
    except (LLFFDataError, MeshLoadError) as exc:
        return "refused", str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        return "TRACEBACK", f"{type(exc).__name__}: {exc}"
    warnings = getattr(result, "warnings", None) or []
    if warnings:
        return "warning", warnings[0]
    return "accepted", ""


def probe_llff(fern: Path, work: Path):
    rows = []
    for name, case in BROKEN.items():
        scene = case.build(fern, work / "llff" / name.replace(" ", "_").replace("/", "_") / "fern")
        outcome, detail = classify(lambda: load_llff_scene(scene, 8, show_progress=False, holdout_every=8))
        rows.append(("LLFF reader", name, outcome, detail.replace(str(work), "…")))
    return rows


def probe_meshes(work: Path):
    rows = []
    for name, make in MESH_CASES.items():
        folder = work / "mesh" / name.replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True)
        path = make(folder / "mesh")
        outcome, detail = classify(lambda: load_mesh(path))
        if outcome == "accepted" and name.startswith("spot"):
            detail = f"{len(load_mesh(path).mesh.faces)} of 5856 faces kept"
        rows.append(("mesh loader", name, outcome, detail.replace(str(work), "…")))
    return rows


def probe_ns(fern: Path, work: Path):
    from support.tiny import TINY_FACTOR, tiny_env, tiny_fern

    good = tiny_fern(work / "ns" / "good", fern)
    out = work / "ns" / "outputs"
    names, cases = {}, []

    def train(name, label, data=good, iters=5, extra=(), method="e-nerf-small"):
        names[name] = label
        cases.append({"name": name, "entry": "train", "argv": [
            method, "--output-dir", str(out), "--experiment-name", "fern", "--timestamp", name,
            "--max-num-iterations", str(iters), "--steps-per-save", "1000", *NERF.args(), *extra,
            "llff", "--data", str(data), "--downscale-factor", str(TINY_FACTOR)]})

    for label, case in [("zero rotation blocks", "zero rotation blocks"),
                        ("all cameras at one pose", "all cameras at one pose"),
                        ("near bound 1e-30", "near bound 1e-30 (scene x1e30)"),
                        ("one image", "one image (holdout_every 8)"),
                        ("RGBA among RGB", "RGBA among RGB")]:
        scene = BROKEN[case].build(good, work / "ns" / label.replace(" ", "_") / "fern", TINY_FACTOR)
        train(label.replace(" ", "-"), label, data=scene)
    train("base", "a good run (8 steps)", iters=8)
    models = out / "fern" / "e-nerf-small" / "base" / "nerfstudio_models"
    (work / "ns" / "empty").mkdir()
    train("ld-missing", "--load-dir missing", extra=["--load-dir", str(work / "ns" / "nope")])
    train("ld-empty", "--load-dir empty folder", extra=["--load-dir", str(work / "ns" / "empty")])
    train("ld-run", "--load-dir the run folder", extra=["--load-dir", str(models.parent)])
    train("ld-other", "--load-dir of the other method", method="nerf-small", iters=12, extra=["--load-dir", str(models)])
    train("ld-finished", "resume command on a finished run", iters=8, extra=["--load-dir", str(models)])
    train("ld-resume", "resume to 12 steps, a stray file beside the checkpoints", iters=12,
          extra=["--load-dir", str(models)])
    cases[-1]["before"] = f"Path({str(models / 'notes.txt')!r}).write_text('x')"
    trunc = work / "ns" / "trunc" / "nerfstudio_models"
    train("ld-trunc", "--load-dir with a truncated checkpoint", extra=["--load-dir", str(trunc)])
    cases[-1]["before"] = (f"import shutil; shutil.copytree({str(models)!r}, {str(trunc)!r}); "
                           f"p = sorted(Path({str(trunc)!r}).glob('*.ckpt'))[-1]; p.write_bytes(p.read_bytes()[:5000])")
    (work / "ns" / "file").write_text("x")
    train("out-file", "--output-dir under a file", extra=["--output-dir", str(work / "ns" / "file" / "o")])
    (work / "ns" / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(Path(__file__).parent / "support" / "ns_cases.py"), str(work / "ns" / "cases.json")],
                   env=tiny_env(work), check=True, capture_output=True)
    codes = json.loads((work / "ns" / "results.json").read_text())
    rows = []
    for name, label in names.items():
        text = (work / "ns" / f"{name}.out").read_text() + (work / "ns" / f"{name}.err").read_text()
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        warns = [line for line in text.splitlines() if "Warning:" in line and "wcnerf" not in line.lower()[:0]]
        if "Traceback" in text:
            outcome, detail = "TRACEBACK", text.strip().splitlines()[-1]
        elif codes[name] == 2 and errors:
            outcome, detail = "refused", errors[0][len("error: "):]
        elif codes[name] == 0 and "the run is finished" in text:
            outcome, detail = "finished (exit 0)", "says the run is finished"
        elif codes[name] == 0 and any("ignoring" in w or "span" in w for w in warns):
            outcome, detail = "warning", next(w for w in warns if "ignoring" in w or "span" in w).strip()
        elif codes[name] == 0:
            outcome, detail = "accepted", ""
        else:
            outcome, detail = f"exit {codes[name]}", text.strip().splitlines()[-1] if text.strip() else ""
        rows.append(("ns-train", label, outcome, detail.replace(str(work), "…")))
    return rows


def probe_derived(fern: Path, work: Path):
    """Issue 30, point 3: ``images_<factor>/`` derived from ``images/`` (a copy of fern's images_8
    standing for the full-size images), through the pure reader, one step after another."""
    import shutil

    from PIL import Image

    scene = work / "derived" / "fern"
    (scene / "images").parent.mkdir(parents=True)
    shutil.copy(fern / "poses_bounds.npy", scene / "poses_bounds.npy")
    shutil.copytree(fern / "images_8", scene / "images")
    odd = sorted((scene / "images").iterdir())[4]
    kept = odd.read_bytes()
    rows = []

    def step(label, change=lambda: None):
        change()
        outcome, detail = classify(lambda: load_llff_scene(scene, 2, show_progress=False, holdout_every=8))
        rows.append(("LLFF reader", label, outcome, detail.replace(str(work), "…")))

    step("images/ only: images_2/ derived")
    step("a source image in images/ resized", lambda: Image.open(odd).resize((100, 80)).save(odd))
    step("the same, after the source is fixed", lambda: odd.write_bytes(kept))
    step("an empty images_2/ beside images/", lambda: (shutil.rmtree(scene / "images_2"), (scene / "images_2").mkdir()))
    step("a file deleted from the derived images_2/", lambda: sorted((scene / "images_2").glob("*.png"))[1].unlink())

    def users_folder():
        shutil.rmtree(scene / "images_2")
        shutil.copytree(scene / "images", scene / "images_2")  # no record: the user's own folder
        sorted((scene / "images_2").glob("*.png"))[-1].unlink()

    step("the user's own images_2/ (no record), one image short, beside images/", users_folder)
    return rows


OUT = object()
"""Stands for a mistake case's own output folder in its argv."""


def probe_mistakes(fern: Path, work: Path):
    """Issue 30's classes of mistakes, each run as the user would type it (through
    tests/support/ns_cases.py). Each case says what it must end in: ``refused`` (exit 2, one line
    naming the option or file, no folder left) or ``accepted``. A case that should be refused but
    exits 0 is counted as silent nonsense."""
    from support.tiny import NERFACTO, TINY_FACTOR, tiny_env, tiny_fern

    root = work / "mistakes"
    good = tiny_fern(root / "good", fern)
    out = root / "outputs"
    mesh = root / "cube.obj"
    root.mkdir(parents=True, exist_ok=True)
    _box().export(mesh)
    bad_protocol = root / "misspelt.yaml"
    bad_protocol.write_text("methods: {nerf: nerf-small}\nbase_method: nerf-small\nseedz: [0]\n")
    cases, expect = [], {}

    def case(label, entry, argv, expected="refused", **extra):
        """``OUT`` in ``argv`` is this case's own output folder (it must not exist after a refusal)."""
        name = f"m{len(cases):02d}"
        cases.append({"name": name, "entry": entry, "argv": [str(out / name if a is OUT else a) for a in argv], **extra})
        expect[name] = (label, expected)

    def train(label, *extra, method="e-nerf-small", scene=good, factor=TINY_FACTOR, expected="refused", **kw):
        case(label, "train", [method, "--output-dir", OUT, "--max-num-iterations", 3, *NERF.args(), *extra,
                              "llff", "--data", scene, "--downscale-factor", factor], expected, **kw)

    # numbers without bounds
    for flag, value in [("--optim.lr", 0), ("--optim.steps", 0), ("--optim.batch-size", 0), ("--field.width", 0),
                        ("--ckpt-every", 0)]:
        case(f"shape fit {flag} {value}", "shape", [mesh, "--output-dir", OUT, flag, value])
    case("shape fit --task sdf --sdf.eikonal-weight -1", "shape",
         [mesh, "--output-dir", OUT, "--task", "sdf", "--sdf.eikonal-weight", -1])
    for extra in (["--max-num-iterations", 0], ["--max-num-iterations", -5], ["--pipeline.model.num-coarse-samples", 0],
                  ["--logging.steps-per-log", 0]):
        train(f"ns-train {' '.join(map(str, extra))}", *extra)
    for factor in (0, -2, 1000):
        train(f"ns-train llff --downscale-factor {factor}", factor=factor)
    # conditioner options and exclude patterns
    for opts in (["detatch", "True"], ["mode", "rows"], ["dim", "0"]):
        train(f"ns-train --pipeline.model.conditioning-options {' '.join(opts)}",
              "--pipeline.model.conditioning-options", *opts)
    train("ns-train --pipeline.model.conditioning-exclude 'field_head.*' (a typo)",
          "--pipeline.model.conditioning-exclude", "field_head.*")
    # wcnerf-train, as careful as ns-train
    case("wcnerf-train nerfacto --data x (no --)", "any", ["nerfacto", "--data", good])
    case("wcnerf-train nerfacto -- --load-dir (missing)", "any",
         ["nerfacto", "--", "--output-dir", OUT, "--load-dir", root / "nope", "--data", good])
    case("wcnerf-train nerfacto -- --machine.device-type cuda (no CUDA here)", "any",
         ["nerfacto", "--", "--output-dir", OUT, "--machine.device-type", "cuda", "--data", good])
    case("wcnerf-train nerfacto (3 steps) on a machine without CUDA", "any",
         ["nerfacto", "--", "--output-dir", root / "any-ok", "--max-num-iterations", 3, *NERFACTO.args(),
          "--pipeline.model.analysis-every", 0, "nerfstudio-data", "--data", root / "ns-data"], "accepted",
         before=(f"import subprocess, sys; subprocess.run([sys.executable, '-m', 'wcnerf.data.convert', "
                 f"{str(good)!r}, {str(root / 'ns-data')!r}, '--downscale-factor', '{TINY_FACTOR}'], check=True)"))
    # the harness
    compare = ["--output-root", OUT, "--data-root", good.parent]
    for label, argv in [("--seeds -1", ["--scenes", "fern", "--seeds", -1]), ("--workers 0", ["--workers", 0]),
                        ("--scenes nosuchscene", ["--scenes", "nosuchscene"]), ("--methods nerff", ["--methods", "nerff"]),
                        ("--protocol with a misspelt key", ["--protocol", bad_protocol]),
                        ("--set max_num_iterations=0", ["--scenes", "fern", "--set", "max_num_iterations=0"])]:
        case(f"wcnerf-compare {label}", "compare", [*argv, *compare])
    # a run that knows its own scene: trained with --data fern in a/, evaluated from b/ with another fern
    a, b = root / "a", root / "b"
    case("ns-train --data fern (relative, in a/), 3 steps", "train",
         ["e-nerf-small", "--output-dir", "outputs", "--experiment-name", "fern", "--timestamp", "t",
          "--max-num-iterations", 3, *NERF.args(),
          "llff", "--data", "fern", "--downscale-factor", TINY_FACTOR], "accepted", cwd=str(a),
         before=(f"import shutil; shutil.copytree({str(good)!r}, {str(a / 'fern')!r}); "
                 f"shutil.copytree({str(good)!r}, {str(b / 'fern')!r}); "
                 f"p = sorted(Path({str(b / 'fern')!r}).glob('images_*/*.png'))[0]; "
                 "from PIL import Image; Image.open(p).rotate(90).save(p)"))
    run_config = a / "outputs" / "fern" / "e-nerf-small" / "t" / "config.yml"
    case("ns-eval of it from b/, which holds another fern", "eval",
         ["--load-config", run_config, "--output-path", root / "eval-b.json"], "accepted", cwd=str(b))
    case("the same, after a/fern is moved away", "eval",
         ["--load-config", run_config, "--output-path", OUT], cwd=str(b),
         before=f"import shutil; shutil.move({str(a / 'fern')!r}, {str(root / 'moved-fern')!r})")
    (root / "cases.json").write_text(json.dumps(cases))
    subprocess.run([sys.executable, str(Path(__file__).parent / "support" / "ns_cases.py"), str(root / "cases.json")],
                   env=tiny_env(root), check=True, capture_output=True, cwd=root)
    codes = json.loads((root / "results.json").read_text())
    rows = []
    for name, (label, expected) in expect.items():
        text = (root / f"{name}.out").read_text() + (root / f"{name}.err").read_text()
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip().startswith(("error: ", "refused: ", "wcnerf-train: "))]
        if "Traceback" in text:
            outcome, detail = "TRACEBACK", text.strip().splitlines()[-1]
        elif codes[name] == 2 and lines:
            outcome, detail = "refused", lines[0].split(": ", 1)[1]
            if (out / name).exists():
                outcome, detail = "refused, FOLDER LEFT", str(out / name)
        elif codes[name] == 0:
            outcome, detail = ("accepted", "") if expected == "accepted" else ("SILENT NONSENSE", "exit 0, should be refused")
        else:
            outcome, detail = f"exit {codes[name]}", text.strip().splitlines()[-1] if text.strip() else ""
        rows.append(("mistake", label, outcome, detail.replace(str(work), "…")))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fern", type=Path, default=None)
    ap.add_argument("--ns", action="store_true")
    args = ap.parse_args()
    fern = args.fern or llff_scene("fern", 8)
    if fern is None:
        print("no fern scene with images_8 found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="wcnerf-probe-") as tmp:
        work = Path(tmp)
        rows = probe_llff(fern, work) + probe_meshes(work)
        if args.ns:
            rows += probe_ns(fern, work) + probe_mistakes(fern, work)
        rows[len(BROKEN):len(BROKEN)] = probe_derived(fern, work)
    print("| reader | input | outcome | message (first line) |")
    print("|---|---|---|---|")
    for reader, name, outcome, detail in rows:
        detail = detail.replace("|", "\\|")
        if len(detail) > 160:
            detail = detail[:157] + "..."
        print(f"| {reader} | {name} | {outcome} | {detail} |")
    counts = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print(f"tracebacks: {counts.get('TRACEBACK', 0)}, silent nonsense: {counts.get('SILENT NONSENSE', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
