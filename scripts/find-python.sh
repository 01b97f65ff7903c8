#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter (pandas-ta needs it): PATH first, then pyenv's
# installed versions (their shims fail until a version is selected, so the binaries are used
# directly). Exits 1 with a clear message when there is none.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
# 3.12 first: the version the project is tested with.
for cand in "${PYTHON:-}" python3.12 python3.13 python3; do
  [ -n "$cand" ] || continue
  p=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$p"; then
    # A pyenv shim may answer only while a version is selected; resolve it to the real binary.
    real=$("$p" -c 'import sys; print(sys.executable)' 2>/dev/null) && { echo "$real"; exit 0; }
  fi
done
root="${PYENV_ROOT:-$HOME/.pyenv}"
if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root 2>/dev/null || echo "$root")"; fi
for p in $(ls -d "$root"/versions/3.12*/bin/python3 2>/dev/null | sort -V -r) \
         $(ls -d "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V); do
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: no Python >= 3.12 found (looked at PATH: python3.12, python3.13, python3; and $root/versions)." >&2
echo "       Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
