#!/bin/bash
# usage: isolate.sh <base-dir> <timeout-seconds> <cmd> [args...]
#
# Runs one container-tool command (skopeo, podman) for the e2e tests, isolated from the
# host and from other tests, and bounded in time:
#   * the environment from podman-env.sh: vfs storage, containers.conf, registries.conf and
#     auth file, all under <base-dir>/podman;
#   * a private mount namespace in which the root-only global paths containers/image and
#     podman 4.3 use anyway (/var/lib/containers: blob-info-cache; /run/containers: auth
#     and netavark run dirs) are bind mounts of <base-dir>/{varlib,run}. Nothing is written
#     to the host's copies; the (empty) mount points are created if missing.
#   * `timeout <timeout-seconds>` around the command (SIGKILL 5 s after SIGTERM).
# Needs root (or CAP_SYS_ADMIN) for unshare --mount.
set -euo pipefail
BASE=$1; SECS=$2; shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PODMAN_BASE="$BASE/podman"
# shellcheck source=podman-env.sh
source "$HERE/podman-env.sh"
mkdir -p "$BASE/varlib" "$BASE/run" /var/lib/containers /run/containers
exec unshare --mount --propagation private /bin/bash -c '
  mount --bind "$1/varlib" /var/lib/containers && mount --bind "$1/run" /run/containers || exit 99
  shift; exec timeout -k 5 "$@"' isolate "$BASE" "$SECS" "$@"
