#!/usr/bin/env bash
# Install napari-artseg and everything its tests need on a fresh Debian/Ubuntu machine.
# - System libraries for napari's OpenGL canvas under Xvfb (when apt-get is available and we may use it).
# - PyTorch 2.13.0 first (the CPU build where a local one is available), then the project with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 \
    libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
    libdbus-1-3 libfontconfig1 >/dev/null
elif ! command -v xvfb-run >/dev/null 2>&1; then
  echo "note: install xvfb and the OpenGL/xcb libraries (see README) to run the GUI tests headless" >&2
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[testing]"
echo "napari-artseg installed: $(python3 -c 'import napari_artseg; print(napari_artseg.__version__)')"
