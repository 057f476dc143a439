#!/bin/sh
# Print the interpreter `make` builds .venv with: a CPython 3.12 (what the Rubin stack
# runs), else 3.13 -- on PATH, or under pyenv where pyenv exists -- else python3 (3.11
# then gets the older pinned middleware and no lsst-images; see pyproject.toml).
# Each candidate is run once: a pyenv shim without that version installed fails here.
works() { "$1" -c "import sys; sys.exit(sys.version_info[:2] != ($2))" >/dev/null 2>&1; }
for v in 3.12 3.13; do
    want=$(echo "$v" | tr . ,)
    if works "python$v" "$want"; then command -v "python$v"; exit 0; fi
    if command -v pyenv >/dev/null 2>&1; then
        for p in "$(pyenv root)"/versions/"$v"*/bin/python"$v"; do
            if [ -x "$p" ] && works "$p" "$want"; then echo "$p"; exit 0; fi
        done
    fi
done
echo python3
