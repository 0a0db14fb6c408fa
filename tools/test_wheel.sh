#!/usr/bin/env bash
# Tests a built wheel as a user receives it: tools/test_wheel.sh WHEEL [PYTHON]
#
# 1. Contents, tags and metadata: the libraries and their build record are in it, auditwheel
#    accepts it without TensorFlow's libraries grafted in, and the TensorFlow pin of its
#    extras is the minor version it was built for.
# 2. GPU code (a CUDA wheel): SASS for every architecture of the build record and PTX of the
#    newest, read by cuobjdump (from the package index) from the op library and _core.
# 3. A fresh venv of PYTHON whose PATH has no compiler, nvcc or CMake gets the wheel and its
#    test extras, and the test suite runs from a folder outside the source tree against the
#    installed package.
set -euo pipefail
wheel=$(realpath "${1:?usage: tools/test_wheel.sh WHEEL [PYTHON]}")
python=$(command -v "${2:-python3}")
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test_wheel.sh: $*" >&2; exit 1; }

# --- 1. contents, tags, metadata ------------------------------------------------------------
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q auditwheel==6.8.2 nvidia-cuda-cuobjdump==13.4.92
mkdir "$work/unpacked"
(cd "$work/unpacked" && "$python" -m zipfile -e "$wheel" .)
package=$work/unpacked/costxent
for file in __init__.py _library.py _build_info.py _costxent_ops.so; do
  [ -f "$package/$file" ] || fail "the wheel has no costxent/$file"
done
ls "$package"/_core.*.so >/dev/null 2>&1 || fail "the wheel has no costxent/_core.*.so"
if ls "$work/unpacked"/costxent.libs 2>/dev/null | grep -q tensorflow; then
  fail "auditwheel grafted TensorFlow's libraries into the wheel"
fi
"$work/tools/bin/auditwheel" show "$wheel"
read -r built_tf with_cuda archs < <("$python" - "$package/_build_info.py" <<'EOF'
import runpy, sys
info = runpy.run_path(sys.argv[1])
print(info["TF_VERSION"], info["WITH_CUDA"], info["CUDA_ARCHS"].replace(" ", "") or "-")
EOF
)
tf_minor=$(echo "$built_tf" | cut -d. -f1-2)
metadata=$(cat "$work/unpacked"/costxent-*.dist-info/METADATA)
for extra in cpu gpu; do
  echo "$metadata" | grep -E "^Requires-Dist: tensorflow.*==${tf_minor//./\\.}\.\*.*extra == \"$extra\"" \
    >/dev/null || fail "extra $extra does not pin TensorFlow $tf_minor.*, which the wheel was built for"
done
echo "test_wheel.sh: built for TensorFlow $built_tf, CUDA kernels: $with_cuda ($archs)"

# --- 2. GPU code ----------------------------------------------------------------------------
if [ "$with_cuda" = True ]; then
  cuobjdump=$("$work/tools/bin/python" -c \
    "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin', 'cuobjdump'))")
  for library in "$package/_costxent_ops.so" "$package"/_core.*.so; do
    elves=$("$cuobjdump" --list-elf "$library")
    ptx=$("$cuobjdump" --list-ptx "$library")
    for arch in ${archs//;/ }; do
      arch=${arch%%-*}
      echo "$elves" | grep -q "sm_$arch" || fail "$(basename "$library") has no SASS for sm_$arch"
    done
    newest=${archs##*;}
    echo "$ptx" | grep -q "sm_${newest%%-*}" || fail "$(basename "$library") has no PTX of sm_$newest"
    echo "test_wheel.sh: $(basename "$library"): SASS $(echo "$elves" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')PTX $(echo "$ptx" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')"
  done
fi

# --- 3. install and test without a compiler ---------------------------------------------------
# A PATH of the few tools the tests and pip use, so that nothing can compile.
mkdir "$work/bin"
for tool in sh bash env uname cat ls rm mkdir cp mv grep sed awk head tail tee sort date chmod timeout ldconfig; do
  found=$(PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin command -v "$tool" || true)
  if [ -n "$found" ]; then ln -s "$found" "$work/bin/$tool"; fi
done
"$python" -m venv "$work/venv"
clean_path=$work/venv/bin:$work/bin
for tool in gcc g++ cc c++ clang clang++ nvcc cmake ninja; do
  if PATH=$clean_path command -v "$tool" >/dev/null; then fail "$tool is on the test PATH"; fi
done
PATH=$clean_path "$work/venv/bin/pip" install -q "costxent[cpu,test] @ file://$wheel"
mkdir "$work/run"
cp -r "$root/tests" "$root/benchmarks" "$root/examples" "$root/README.md" "$work/run/"
cd "$work/run"
installed=$(PATH=$clean_path "$work/venv/bin/python" -c "import costxent; print(costxent.__file__)" 2>/dev/null)
case "$installed" in
  "$work/venv/"*) echo "test_wheel.sh: testing $installed" ;;
  *) fail "the tests would import costxent from $installed, not from the installed wheel" ;;
esac
PATH=$clean_path "$work/venv/bin/python" -m pytest tests -q -p no:cacheprovider "${@:3}"
