# Sourced by isolate.sh: a private podman/skopeo environment under $PODMAN_BASE (required).
# vfs storage (no overlay or fuse needed), cgroupfs, file event log, no search registries,
# and an auth file of its own (REGISTRY_AUTH_FILE, also used by skopeo).
: "${PODMAN_BASE:?set PODMAN_BASE}"
mkdir -p "$PODMAN_BASE"/{root,runroot,tmp,xdg,volumes,networks}
cat > "$PODMAN_BASE/storage.conf" <<C
[storage]
driver = "vfs"
graphroot = "$PODMAN_BASE/root"
runroot = "$PODMAN_BASE/runroot"
C
cat > "$PODMAN_BASE/containers.conf" <<C
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_BASE/events.log"
tmp_dir = "$PODMAN_BASE/tmp"
volume_path = "$PODMAN_BASE/volumes"
static_dir = "$PODMAN_BASE/root/libpod"
[network]
network_config_dir = "$PODMAN_BASE/networks"
C
cat > "$PODMAN_BASE/registries.conf" <<C
unqualified-search-registries = []
short-name-mode = "disabled"
C
export CONTAINERS_STORAGE_CONF="$PODMAN_BASE/storage.conf"
export CONTAINERS_CONF="$PODMAN_BASE/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$PODMAN_BASE/registries.conf"
export REGISTRY_AUTH_FILE="$PODMAN_BASE/auth.json"
# podman login errors if the auth file is missing
[ -s "$REGISTRY_AUTH_FILE" ] || echo '{"auths":{}}' > "$REGISTRY_AUTH_FILE"
export XDG_RUNTIME_DIR="$PODMAN_BASE/xdg"
# no proxy for the loopback registry and gateway
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
