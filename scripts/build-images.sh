#!/usr/bin/env bash
# Build vmpower's container images offline and pin them in containers/images.lock.json.
#
#   scripts/build-images.sh                  # docker (default): base, wheelhouse, all three images
#   ENGINE=podman scripts/build-images.sh    # the same with podman (podman build --timestamp 0)
#   NO_CACHE=1 scripts/build-images.sh       # rebuild the images without the layer cache
#   IMAGES=pipeline scripts/build-images.sh  # only some images
#
# Steps (each skipped when its inputs have not changed, so re-running is cheap):
#   1. Debian packages: docker.io (or podman) and debootstrap, from the machine's apt sources.
#   2. Engine: start dockerd in the background when no engine answers (no systemd needed).
#   3. Base: a minbase bookworm rootfs with python3 via debootstrap from the Debian mirror
#      configured in the machine's apt sources, cleaned, tar'ed reproducibly, imported as
#      vmpower-base:bookworm.
#   4. Wheelhouse: build/wheelhouse/<image>/ via `pip download --require-hashes --no-deps`
#      from envs/<image>.lock (pip reads the machine's pip config), for cp311 manylinux x86_64.
#   5. Images: `build --network none` from a context holding only that wheelhouse and the lock
#      (and, for the serve image, the checkout's src/vmpower, schemas/ and config.yaml).
#   6. containers/images.lock.json: image IDs (and the inputs they were built from).
# Timings of each phase are printed and written to build/images-timings.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ENGINE=${ENGINE:-docker}
IMAGES=${IMAGES:-pipeline collect serve}
NO_CACHE=${NO_CACHE:-}
SUITE=${SUITE:-bookworm}
BUILD=${BUILD_DIR:-$ROOT/build}
LOCK_JSON=${LOCK_JSON:-$ROOT/containers/images.lock.json}
PY_VERSION=3.11            # bookworm's python3; the wheelhouse must match it
BASE_TAG=vmpower-base:$SUITE
BASE_PACKAGES=python3      # plus the minbase set (Required priority + apt)
BASE_RECIPE_VERSION=1      # bump when the base recipe below changes
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/containers/containers.conf}
export DOCKER_BUILDKIT=1

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] error: %s\n' "$*" >&2; exit 1; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo

TIMINGS=()
phase_start() { PHASE=$1; PHASE_T0=$(date +%s.%N); log "== $PHASE"; }
phase_end() {
  local dt; dt=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$PHASE_T0" "$(date +%s.%N)")
  TIMINGS+=("$PHASE ${dt}s${1:+ ($1)}"); log "   $PHASE: ${dt}s${1:+ ($1)}"
}

case "$ENGINE" in
  docker) DOCKER=${DOCKER_BIN:-/usr/bin/docker}; [ -x "$DOCKER" ] || DOCKER=docker; ENGINE_DEB=docker.io ;;
  podman) DOCKER=${PODMAN_BIN:-podman}; ENGINE_DEB=podman ;;
  *) die "ENGINE must be docker or podman, not '$ENGINE'" ;;
esac
mkdir -p "$BUILD"

# ---------------------------------------------------------------------------------------------
phase_start "debs"
bash scripts/ensure-debs.sh "$ENGINE_DEB" debootstrap
[ "$ENGINE" = docker ] && [ ! -x /usr/bin/docker ] && die "/usr/bin/docker missing after installing docker.io"
phase_end

# ---------------------------------------------------------------------------------------------
phase_start "engine"
if [ "$ENGINE" = docker ]; then
  if ! "$DOCKER" info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "dockerd not found (docker.io not installed?)"
    log "no Docker engine answering: starting dockerd in the background (log: $BUILD/dockerd.log)"
    $SUDO bash -c "nohup dockerd >'$BUILD/dockerd.log' 2>&1 </dev/null & echo \$! >'$BUILD/dockerd.pid'"
    for _ in $(seq 1 60); do
      [ -S /var/run/docker.sock ] && "$DOCKER" info >/dev/null 2>&1 && break
      sleep 1
    done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not come up in 60 s; see $BUILD/dockerd.log"
  fi
else
  "$DOCKER" info >/dev/null 2>&1 || die "podman does not work here (CONTAINERS_CONF=$CONTAINERS_CONF)"
fi
phase_end "$("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null || "$DOCKER" --version)"

# ---------------------------------------------------------------------------------------------
# The Debian mirror: the first `deb` source in the machine's apt configuration that carries
# $SUITE/main. Read at build time; never written into the repository.
debian_mirror() {
  python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
found = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for block in re.split(r"\n\s*\n", open(path, encoding="utf-8", errors="replace").read()):
        fields, key = {}, None
        for line in block.splitlines():
            if line.lstrip().startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
            continue
        if suite in fields.get("suites", "").split() and "main" in fields.get("components", "").split():
            found += fields.get("uris", "").split()
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(line) >= 4 and line[0] == "deb" and line[2] == suite and "main" in line[3:]:
            found.append(line[1])
if not found:
    sys.exit(f"no 'deb' source for {suite}/main in /etc/apt/sources.list*")
print(found[0].rstrip("/"))
PY
}

phase_start "base"
BASE_DIR=$BUILD/base
BASE_TAR=$BASE_DIR/rootfs.tar
MIRROR=$(debian_mirror)
BASE_KEY=$(printf '%s\n' "$BASE_RECIPE_VERSION" "$SUITE" "$BASE_PACKAGES" "$MIRROR" "$(dpkg --print-architecture)" | sha256sum | cut -c1-16)
if [ -s "$BASE_TAR" ] && [ "$(cat "$BASE_DIR/key" 2>/dev/null)" = "$BASE_KEY" ]; then
  log "base rootfs up to date ($BASE_TAR)"
  base_note="cached"
else
  rm -rf "$BASE_DIR"; mkdir -p "$BASE_DIR"
  ROOTFS=$BASE_DIR/rootfs
  log "debootstrap --variant=minbase $SUITE (+ $BASE_PACKAGES) from the configured Debian mirror"
  t0=$(date +%s)
  $SUDO debootstrap --variant=minbase --include="$BASE_PACKAGES" --components=main \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$BASE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$BASE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $BASE_DIR/debootstrap.log)"; }
  log "debootstrap took $(( $(date +%s) - t0 ))s"
  # One timestamp for every file: the date of the suite's Release file (same mirror state ->
  # same tar), so the base is reproducible as far as Debian's packages are.
  release=$(ls "$ROOTFS"/var/lib/apt/lists/*_Release 2>/dev/null | head -n1 || true)
  EPOCH=$( { [ -n "$release" ] && date -d "$(sed -n 's/^Date: //p' "$release")" +%s; } || echo 0)
  # Clean: no apt lists/caches, docs, logs, host files copied by debootstrap, machine id.
  $SUDO chroot "$ROOTFS" /bin/sh -c '
      set -e
      apt-get clean
      # Hash-based .pyc for the standard library (valid whatever the file mtimes are).
      find /usr/lib/python3* -name __pycache__ -type d -prune -exec rm -rf {} +
      python3 -m compileall -q --invalidation-mode unchecked-hash /usr/lib/python3.11 >/dev/null || true
  '
  $SUDO rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/cache/ldconfig/aux-cache "$ROOTFS"/var/lib/dpkg/*-old \
    "$ROOTFS"/var/log/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/lintian "$ROOTFS"/usr/share/linda "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/etc/hostname "$ROOTFS"/etc/resolv.conf "$ROOTFS"/etc/hosts \
    "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/root/.cache
  : | $SUDO tee "$ROOTFS/etc/machine-id" >/dev/null
  # /etc/shadow records the day it was written; pin it to the Release date.
  day=$(( EPOCH / 86400 ))
  $SUDO sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1${day}:/" "$ROOTFS/etc/shadow"
  [ -e "$ROOTFS/etc/shadow-" ] && $SUDO rm -f "$ROOTFS/etc/shadow-" "$ROOTFS/etc/passwd-" "$ROOTFS/etc/group-" "$ROOTFS/etc/gshadow-"
  $SUDO chmod 1777 "$ROOTFS/tmp"
  $SUDO tar --sort=name --mtime="@$EPOCH" --numeric-owner --xattrs-exclude='*' \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$ROOTFS" -cf "$BASE_TAR.tmp" .
  $SUDO rm -rf "$ROOTFS"
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  echo "$EPOCH" >"$BASE_DIR/epoch"
  echo "$BASE_KEY" >"$BASE_DIR/key"
  base_note="debootstrap"
fi
BASE_SHA=$(sha256sum "$BASE_TAR" | cut -d' ' -f1)
# Import unless an image from this exact tar is already there (labelled with the tar's sha256).
base_id=$("$DOCKER" image inspect --format '{{.Id}} {{index .Config.Labels "org.vmpower.base.tar-sha256"}}' "$BASE_TAG" 2>/dev/null || true)
if [ "${base_id#* }" = "$BASE_SHA" ]; then
  BASE_ID=${base_id%% *}
else
  if [ "$ENGINE" = podman ]; then
    # podman: a FROM-scratch build of the same tar with --timestamp 0 gives the same image ID
    # on every machine (`podman import` would stamp the import time into the image).
    ctx=$BUILD/ctx/base; rm -rf "$ctx"; mkdir -p "$ctx"; ln "$BASE_TAR" "$ctx/rootfs.tar" 2>/dev/null || cp "$BASE_TAR" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nLABEL org.vmpower.base.tar-sha256=%s\nENV LANG=C.UTF-8\nCMD ["python3"]\n' "$BASE_SHA" >"$ctx/Containerfile"
    "$DOCKER" build --quiet --timestamp 0 --network none --pull=never -t "$BASE_TAG" -f "$ctx/Containerfile" "$ctx" >/dev/null
  else
    "$DOCKER" import --change "LABEL org.vmpower.base.tar-sha256=$BASE_SHA" --change "ENV LANG=C.UTF-8" \
      --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_TAG" >/dev/null
  fi
  BASE_ID=$("$DOCKER" image inspect --format '{{.Id}}' "$BASE_TAG")
  base_note="$base_note, imported"
fi
phase_end "$base_note; $(( $(stat -c %s "$BASE_TAR") / 1048576 )) MB tar"

# ---------------------------------------------------------------------------------------------
phase_start "wheelhouse"
PLATFORMS=()
for minor in 36 35 34 33 32 31 28 27 26 24 17; do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
fetch_wheels() {  # <dest dir> <lock file>; skipped when the lock is unchanged since the last fill
  local stamp; stamp=$(sha256sum "$2" | cut -d' ' -f1)
  if [ "$(cat "$1/.lock-sha256" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  rm -rf "$1"; mkdir -p "$1"   # start clean: no wheel the lock no longer names
  python3 -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps \
    --only-binary=:all: --implementation cp --python-version "$PY_VERSION" --abi "cp${PY_VERSION/./}" \
    "${PLATFORMS[@]}" -d "$1" -r "$2" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$stamp" >"$1/.lock-sha256"
}
fetch_wheels "$BUILD/wheelhouse/tools" containers/build-tools.lock
for image in $IMAGES; do fetch_wheels "$BUILD/wheelhouse/$image" "envs/$image.lock"; done
phase_end "$(du -sm "$BUILD/wheelhouse" | cut -f1) MB"

# ---------------------------------------------------------------------------------------------
read_lock_field() {  # <image> <field>   (from containers/images.lock.json, for this engine)
  python3 - "$LOCK_JSON" "$1" "$ENGINE" "$2" <<'PY'
import json, sys
path, image, engine, field = sys.argv[1:]
try:
    print(json.load(open(path))["images"][image][engine][field])
except (OSError, KeyError, ValueError):
    print("")
PY
}

# The vmpower files the serve image contains (sorted, relative): the package, the schemas and
# config.yaml that vmpower.paths finds next to it. From git when this is a checkout (tracked
# and untracked-but-not-ignored files as they are in the work tree), else every file.
app_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -co --exclude-standard -- src/vmpower schemas config.yaml
  else
    find src/vmpower schemas config.yaml -type f
  fi | grep -v -e '/__pycache__/' -e '\.pyc$' | while IFS= read -r f; do if [ -f "$f" ]; then printf '%s\n' "$f"; fi; done | LC_ALL=C sort
}

for image in $IMAGES; do
  phase_start "image $image"
  dockerfile=containers/Dockerfile.$image
  [ -f "$dockerfile" ] || die "$dockerfile missing"
  lockfile=envs/$image.lock
  # Everything the image is built from; a change to any of them means a rebuild (for serve
  # also the vmpower source it contains).
  source_sha=""
  [ "$image" != serve ] || source_sha=$(app_files | xargs -d '\n' sha256sum | sha256sum | cut -d' ' -f1)
  inputs=$( { sha256sum "$dockerfile" "$lockfile" containers/build-tools.lock | cut -d' ' -f1; echo "$BASE_SHA"; [ -z "$source_sha" ] || echo "$source_sha"; } | sha256sum | cut -d' ' -f1)
  old_id=$(read_lock_field "$image" id)
  if [ -z "$NO_CACHE" ] && [ "$(read_lock_field "$image" inputs)" = "$inputs" ] && [ -n "$old_id" ] \
     && "$DOCKER" image inspect "$old_id" >/dev/null 2>&1; then
    log "vmpower-$image up to date ($old_id)"
    IMAGE_ID=$old_id; note="cached"
  else
    ctx=$BUILD/ctx/$image
    rm -rf "$ctx"; mkdir -p "$ctx/wheels"
    # Only the wheels this lock names (hard links, no copy), the pinned pip and the locks.
    cp -al "$BUILD/wheelhouse/$image/." "$ctx/wheels/"
    cp -al "$BUILD/wheelhouse/tools/." "$ctx/wheels/"
    cp "$lockfile" "$ctx/requirements.lock"
    cp containers/build-tools.lock "$ctx/build-tools.lock"
    # The deployment image contains the source: the checkout's files (tracked or not ignored),
    # with fixed modes and mtimes so the same tree gives the same layer.
    if [ -n "$source_sha" ]; then
      mkdir -p "$ctx/app"
      app_files | xargs -d '\n' cp --parents -t "$ctx/app"
      find "$ctx/app" -type d -exec chmod 0755 {} + ; find "$ctx/app" -type f -exec chmod 0644 {} +
      find "$ctx/app" -exec touch -h -d @0 {} +
    fi
    args=(build --network none --build-arg "BASE_IMAGE=$BASE_TAG" --label "org.vmpower.inputs=$inputs"
          -t "vmpower-$image:latest" -f "$dockerfile")
    if [ "$ENGINE" = podman ]; then
      args+=(--timestamp 0 --pull=never --layers=false)
    fi
    [ -n "$NO_CACHE" ] && args+=(--no-cache)
    iidfile=$ctx.iid; rm -f "$iidfile"
    "$DOCKER" "${args[@]}" --iidfile "$iidfile" "$ctx" >"$ctx.log" 2>&1 \
      || { tail -30 "$ctx.log" >&2; die "building vmpower-$image failed (log: $ctx.log)"; }
    IMAGE_ID=$(cat "$iidfile")
    case "$IMAGE_ID" in sha256:*) ;; *) IMAGE_ID=sha256:$IMAGE_ID ;; esac
    rm -rf "$ctx"   # the context is only hard links; keep build/ small
    note="built"
  fi
  size=$("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE_ID")
  python3 - "$LOCK_JSON" "$image" "$ENGINE" "$IMAGE_ID" "$inputs" "$size" "$BASE_SHA" "$lockfile" "$dockerfile" "$source_sha" <<'PY'
import hashlib, json, os, sys
path, image, engine, image_id, inputs, size, base_sha, lockfile, dockerfile, source_sha = sys.argv[1:]
try:
    data = json.load(open(path))
except (OSError, ValueError):
    data = {}
data.setdefault("version", 1)
data["comment"] = ("Written by scripts/build-images.sh (make images). Image IDs are the sha256 of "
                   "each image's config (immutable); manifest_digest is set when pushed to a registry.")
entry = data.setdefault("images", {}).setdefault(image, {})
entry["name"] = f"vmpower-{image}"
entry["env_lock"] = lockfile
entry["dockerfile"] = dockerfile
old = entry.get(engine, {})
new = {"id": image_id, "inputs": inputs, "size_bytes": int(size), "base_tar_sha256": base_sha,
       "env_lock_sha256": hashlib.sha256(open(lockfile, "rb").read()).hexdigest()}
if source_sha:  # the vmpower source baked into the image (scripts/build-images.sh app_files)
    new["source_sha256"] = source_sha
entry[engine] = new
# A pushed manifest describes one build; drop it once that build is replaced.
if entry.get("manifest_of", {}).get("engine") == engine and entry["manifest_of"].get("id") != image_id:
    entry.pop("manifest_digest", None)
    entry.pop("manifest_of", None)
tmp = path + ".tmp"
with open(tmp, "w") as fh:
    json.dump(data, fh, indent=2, sort_keys=True)
    fh.write("\n")
os.replace(tmp, path)
PY
  phase_end "$note; $IMAGE_ID; $(( size / 1000000 )) MB"
done

# ---------------------------------------------------------------------------------------------
# Sites with a registry: PUSH_REGISTRY=<host[:port]/path> pushes each image and records its
# manifest digest (what `docker://<registry>/vmpower-<image>@sha256:...` refers to) in the lock.
if [ -n "${PUSH_REGISTRY:-}" ]; then
  PUSH_REGISTRY=${PUSH_REGISTRY%/}
  for image in $IMAGES; do
    phase_start "push $image"
    id=$(read_lock_field "$image" id)
    ref=$PUSH_REGISTRY/vmpower-$image:$(read_lock_field "$image" inputs | cut -c1-16)
    "$DOCKER" tag "$id" "$ref"
    if [ "$ENGINE" = podman ]; then
      "$DOCKER" push --digestfile "$BUILD/push.digest" "$ref" >&2
      digest=$(cat "$BUILD/push.digest")
    else
      "$DOCKER" push "$ref" >&2
      digest=$("$DOCKER" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$id" \
               | sed -n "s|^$PUSH_REGISTRY/vmpower-$image@||p" | head -n1)
    fi
    case "$digest" in sha256:*) ;; *) die "no manifest digest for $ref after push" ;; esac
    python3 - "$LOCK_JSON" "$image" "$ENGINE" "$id" "$digest" <<'PY'
import json, os, sys
path, image, engine, image_id, digest = sys.argv[1:]
data = json.load(open(path))
entry = data["images"][image]
# The registry host is not recorded (the lock is committed): config containers.registry names it.
entry["manifest_digest"] = digest
entry["manifest_of"] = {"engine": engine, "id": image_id}
with open(path + ".tmp", "w") as fh:
    json.dump(data, fh, indent=2, sort_keys=True)
    fh.write("\n")
os.replace(path + ".tmp", path)
PY
    phase_end "$digest"
  done
fi

mkdir -p "$BUILD"
printf '%s\n' "engine: $ENGINE" "${TIMINGS[@]}" | tee "$BUILD/images-timings.txt" >&2
log "pinned in ${LOCK_JSON#$ROOT/}"
