#!/usr/bin/env bash
# Fails when a crate declares a dependency its code never names (the check cargo-machete makes,
# without installing it): for each [dependencies] / [dev-dependencies] entry of each workspace
# crate, the crate's sources (src/, benches/, tests/, examples/) must mention it as a path
# (`name::`, `use name`, `name!`, `extern crate name`). ALLOW lists the ones used only through
# features or by other crates' macros.
set -euo pipefail
cd "$(dirname "$0")/.."
# dependency name -> why it is kept without being named
declare -A ALLOW=(
  [libmimalloc-sys]="mimalloc's extended features (its symbols are linked, not named)"
  [async-stripe]="named as stripe (its lib name)"
)
fail=0
for manifest in */Cargo.toml examples/*/Cargo.toml; do
  [[ -f "$manifest" ]] || continue
  dir=$(dirname "$manifest")
  deps=$(awk '/^\[(dev-)?dependencies\]/{on=1; next} /^\[/{on=0} on && /^[A-Za-z0-9_-]+/ {sub(/[ .=].*/, ""); print}' "$manifest")
  for dep in $deps; do
    [[ -n "${ALLOW[$dep]:-}" ]] && continue
    name=${dep//-/_}
    case "$dep" in async-stripe-*) name="stripe_${name#async_stripe_}" ;; esac
    if ! grep -rqE "(^|[^A-Za-z0-9_])${name}(::|!| *;|\s+as\s)" "$dir"/src "$dir"/benches "$dir"/tests "$dir"/examples 2>/dev/null; then
      echo "unused dependency: $dep in $manifest"
      fail=1
    fi
  done
done
if (( fail )); then
  echo "remove them (or add them to ALLOW in scripts/unused-deps.sh with the reason)"
  exit 1
fi
echo "no unused dependencies"
