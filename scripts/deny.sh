#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans (duplicate versions listed) and
# sources always; security advisories when their database (GitHub) can be fetched from here, else
# it says so. Run by scripts/test.sh; cargo-deny is installed by scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo-deny reads the metadata of every target's dependencies; a build downloads only the host's,
# so fetch the rest of the lockfile first (a no-op once cached).
cargo fetch --locked --quiet
if ! out=$(cargo deny --offline check licenses bans sources 2>&1); then
  echo "$out"; exit 1
fi
echo "$out" | tail -1
if timeout 30 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "cargo deny: the advisory database (github.com/rustsec/advisory-db) cannot be fetched from here; advisories not checked"
fi
