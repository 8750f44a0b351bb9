#!/usr/bin/env bash
# A virtualenv for the authors' MAGPO code (github liyheng/MAGPO, built on Mava), for side-by-side checks:
# benchmark/sps.py (speed) and benchmark/parity/export_authors.py (the parity fixtures).
# Their code is never committed here: fetch it yourself, e.g.
#   git clone https://github.com/liyheng/MAGPO /tmp/authors-src && git -C /tmp/authors-src checkout d2ac38b
# Usage: bash benchmark/authors/setup.sh SRC_DIR   -> virtualenv at ${AUTHORS_VENV:-/tmp/authors-venv}
# It pins their dependencies (requirements.txt beside this file, what their uv.lock resolves to on
# Python 3.11, CPU), stamps the commit into SRC_DIR/.authors_commit, and patches SRC_DIR with patch.py,
# which only guards three optional imports and prints each interval's steps/s. Algorithms untouched.
set -euo pipefail
src=$(cd "${1:?usage: setup.sh SRC_DIR (a copy of github liyheng/MAGPO)}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
venv=${AUTHORS_VENV:-/tmp/authors-venv}
commit=d2ac38b
if [ -d "$src/.git" ]; then
  head=$(git -C "$src" rev-parse HEAD)
  case "$head" in "$commit"*) ;; *) echo "error: $src is at $head, not $commit" >&2; exit 1 ;; esac
  echo "$head" > "$src/.authors_commit"
elif [ ! -f "$src/.authors_commit" ]; then
  echo "error: $src is no git checkout; write the commit you copied into $src/.authors_commit" >&2; exit 1
fi
[ -f "$src/mava/systems/gpo/anakin/rec_magpo.py" ] || { echo "error: $src holds no mava/systems/gpo" >&2; exit 1; }
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/python" "$here/patch.py" "$src"
cat <<MSG
ready: $venv with $src.
  speed:    python benchmark/sps.py --scripts magpo_sable --env-ids coordsum-3x10 --authors-src $src --authors-venv $venv
  fixtures: PYTHONPATH=$src $venv/bin/python benchmark/parity/export_authors.py --authors-src $src
MSG
