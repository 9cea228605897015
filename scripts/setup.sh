#!/usr/bin/env bash
# Set-up for a fresh machine: creates .venv in the repo root and installs wcnerf with
# everything it needs (torch, nerfstudio 1.1.5, trimesh, libigl, the test extra, and the
# cluster extra: Ray and submitit, which a pip user needs only for `wcnerf-compare --executor
# ray|slurm`, but the executor tests run here), plus the Debian packages some nerfstudio
# commands need. Safe to run again: it skips what is there.
#
# torch: PyPI's default Linux x86_64 wheel is a CUDA build that also runs on the CPU, so the
# same pin serves CUDA machines and CPU-only ones. torch 2.13.0's CPU-only wheel cannot import
# PyPI's torchvision ("operator torchvision::nms does not exist"), hence 2.14.1 + 0.29.1.
# Override with WCNERF_TORCH="torch==X torchvision==Y" (e.g. to match your CUDA driver).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -q --upgrade pip

if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    if [ -n "${WCNERF_TORCH:-}" ]; then
        TORCH_SPEC=($WCNERF_TORCH)
    else
        case "$(uname -m)" in
            x86_64) TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1) ;;
            aarch64 | arm64) TORCH_SPEC=(torch==2.9.1 torchvision==0.24.1) ;;
            *) TORCH_SPEC=(torch torchvision) ;;
        esac
    fi
    echo "[setup] installing ${TORCH_SPEC[*]}"
    "${PIP[@]}" install -q "${TORCH_SPEC[@]}"
fi

# nerfstudio: pyproject accepts >=1.1.5,<1.2; here the version everything was tested with.
echo "[setup] installing wcnerf (editable) with nerfstudio 1.1.5 and the test and cluster extras"
"${PIP[@]}" install -q -e ".[test,cluster]" "nerfstudio==1.1.5"

# System packages: open3d (ns-export) needs libusb-1.0-0, ns-render's camera paths need
# ffmpeg, the viewer tests need chromium. Installed when we are root with apt, else listed.
NEED=()
ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so" || NEED+=(libusb-1.0-0)
command -v ffmpeg >/dev/null || NEED+=(ffmpeg)
command -v chromium >/dev/null || NEED+=(chromium)
if [ ${#NEED[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] apt-get install ${NEED[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${NEED[@]}" >/dev/null
    else
        echo "[setup] NOTE: please install these system packages yourself: ${NEED[*]}"
        echo "        (libusb-1.0-0 for ns-export, ffmpeg for ns-render, chromium for the viewer tests)"
    fi
fi
echo "[setup] done: $(.venv/bin/python -c 'import torch, nerfstudio; print("torch", torch.__version__, "| cuda:", torch.cuda.is_available())')"
