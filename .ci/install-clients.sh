#!/usr/bin/env bash
# Install what the generated Go and TypeScript clients need (issue 7), on a fresh Debian machine,
# as root, reaching only the Debian, npm and PyPI registries. Idempotent: run it as often as you like.
#
#   Go:  Debian's Go toolchain, the protoc plugins protoc-gen-go / protoc-gen-go-grpc, and the Go
#        modules grpc and protobuf as Debian packages (source under /usr/share/gocode/src).
#        Go modules cannot be downloaded here, so client/go builds OFFLINE in vendor mode:
#        client/go/debian-vendor.sh links vendor/ to Debian's sources and writes vendor/modules.txt
#        (why plain GOPROXY=off + replace directives does not work is explained in that script).
#        golang-github-golang-protobuf-1-5-dev is named explicitly: golang-google-grpc-dev accepts
#        the 1.3 API as well, which cannot marshal messages from protoc-gen-go 1.28.
#   TS:  Node.js + npm (already on the machine image; Debian's nodejs/npm otherwise), then `npm ci`
#        in client/ts (ts-proto, typescript, @grpc/grpc-js, pinned by package-lock.json).
#   The protoc itself is the one grpcio-tools ships in the Python venv (proto/generate.py).
#
# Afterwards: python proto/generate.py --check; (cd client/go && go build ./... && go vet ./...);
#             (cd client/ts && npm run build && node dist/examples/trader/main.js --addr HOST:PORT)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

packages=(
  golang-go
  golang-google-grpc-dev
  golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
  golang-google-genproto-dev  # google/api/annotations (the HTTP mapping of the protos)
  protoc-gen-go
  protoc-gen-go-grpc
)
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-clients: apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "install-clients: $(go version); $(protoc-gen-go --version); $(protoc-gen-go-grpc --version)"
echo "install-clients: node $(node --version); npm $(npm --version)"

# Go: offline module setup against Debian's packages, then a build to warm the cache.
client/go/debian-vendor.sh
(cd client/go && GOFLAGS= GOPROXY=off go build ./...)

# TypeScript: exact versions from package-lock.json.
(cd client/ts && npm ci --no-audit --no-fund --loglevel=error)
echo "install-clients: done"
