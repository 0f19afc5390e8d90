# Source this in a shell on a GPU machine that has torch but no ffcv (and no network):
#
#     . benchmarks/gpu_setup.sh && python3 -c 'import ffcv'
#
# with the .gpu/ bundle copied into the repository. The bundle in .gpu/ (git-ignored; how to rebuild it: benchmarks/README.md)
# holds wheels/ (ffcv 1.0.2 built for cp312, plus the pure-Python fastargs, terminaltables,
# assertpy, pytorch_pfn_extras) and debs/ (Debian bookworm's libturbojpeg0, libopencv-core406,
# libopencv-imgproc406, libjpeg62-turbo for the fast decoder, and the libraries they link
# against), optionally the fast decoder's _fastjpeg*.so built here. Everything goes to a new
# private folder (mktemp -d: mode 0700, a name nobody can plant beforehand; it is put first on
# PYTHONPATH and LD_LIBRARY_PATH, so a fixed /tmp path there would let any local user's files be
# imported and loaded): wheels to site/, the .debs unpacked under sys/, and only the libraries that
# machine lacks linked from lib/, so its own newer copies win. Its path is in $GPU_SETUP_DIR
# (remove it when done; sourcing again makes a new one).
_gpu_bundle="${GPU_BUNDLE:-.gpu}"
if [ ! -d "$_gpu_bundle/wheels" ] || [ ! -d "$_gpu_bundle/debs" ]; then
    echo "gpu_setup: no bundle at $_gpu_bundle (copy .gpu/ into the repository first)" >&2
    return 1 2>/dev/null || exit 1
fi
_gpu_dir=$(mktemp -d "${TMPDIR:-/tmp}/gpu_setup.XXXXXXXX") || { return 1 2>/dev/null || exit 1; }
mkdir "$_gpu_dir/site" "$_gpu_dir/sys" "$_gpu_dir/lib"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$_gpu_dir/site" "$_gpu_bundle"/wheels/*.whl || { return 1 2>/dev/null || exit 1; }
for _deb in "$_gpu_bundle"/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$_deb" "$_gpu_dir/sys"
    else  # no dpkg: a .deb is an ar archive holding data.tar.*
        python3 - "$_deb" "$_gpu_dir/sys" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # nothing outside sys/
pos = 8
while pos < len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2], **safe)
    pos += 60 + size + (size & 1)
PY
    fi
done
# One flat folder of the sonames this machine does not already have (lapack/blas live in
# alternatives subfolders in Debian).
for _lib in $(find "$_gpu_dir/sys/usr/lib/x86_64-linux-gnu" -name 'lib*.so.*' \
                   \( -type f -o -type l \)); do
    _soname=$(basename "$_lib")
    if ! ldconfig -p | grep -q "^[[:space:]]*$_soname "; then
        ln -sf "$(readlink -f "$_lib")" "$_gpu_dir/lib/$_soname"
    fi
done
export GPU_SETUP_DIR="$_gpu_dir"
export LD_LIBRARY_PATH="$_gpu_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$_gpu_dir/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import ffcv, ffcv.libffcv; from ffcv.loader import Loader" \
    && echo "gpu_setup: ffcv importable from $_gpu_dir;" \
            "LD_LIBRARY_PATH gets $(ls "$_gpu_dir/lib" | tr '\n' ' ')"
# The fast decoder (ffcv_utils/load/csrc/fastjpeg.c) is a plain C library loaded with ctypes, so the
# copy built by `make install` on the CPU machine works under any Python: take it from the bundle
# (or carry ffcv_utils/load/_fastjpeg*.so), else build it when this machine has a compiler and
# libjpeg's headers. Without it the loaders need --data.decoder ffcv.
if ! ls ffcv_utils/load/_fastjpeg*.so >/dev/null 2>&1; then
    if ls "$_gpu_bundle"/_fastjpeg*.so >/dev/null 2>&1; then
        cp "$_gpu_bundle"/_fastjpeg*.so ffcv_utils/load/
    elif command -v gcc >/dev/null && [ -f /usr/include/jpeglib.h ]; then
        gcc -O3 -std=c99 -D_GNU_SOURCE -shared -fPIC ffcv_utils/load/csrc/fastjpeg.c -ljpeg \
            -o ffcv_utils/load/_fastjpeg.so
    fi
fi
python3 -c "from ffcv_utils.load import decode; decode.library()" 2>/dev/null \
    && echo "gpu_setup: fast decoder loaded" \
    || echo "gpu_setup: no fast decoder here (ffcv_utils/load/_fastjpeg*.so); use --data.decoder ffcv" >&2
