#!/bin/sh
# Build client/go OFFLINE against Debian's packaged Go modules.
#
# Debian ships Go libraries as source trees under /usr/share/gocode/src (golang-google-grpc-dev,
# golang-google-protobuf-dev, golang-github-golang-protobuf-1-5-dev, golang-golang-x-*-dev, ...),
# not as module-cache zips, so module mode cannot download or verify them. What does NOT work
# offline: GOPROXY=off with GOFLAGS=-mod=mod plus `replace` directives (in go.mod or go.work),
# because grpc 1.33's go.mod is pre-1.17 (not pruned), so the go command wants the go.mod of every
# module in its transitive graph (envoyproxy, cncf/udpa, x/tools, ...), none of which exist here.
#
# What works: vendor mode. This script makes client/go/vendor/ a set of symlinks into
# /usr/share/gocode/src, one per module required by go.mod, plus the vendor/modules.txt that
# `go mod vendor` would have written. With a vendor/modules.txt present and `go 1.14+` in go.mod,
# the go command uses -mod=vendor by default and never touches the network or the module graph:
#     ./debian-vendor.sh && go build ./... && go vet ./...
# The versions in go.mod are the upstream releases (what an online `go mod tidy` resolves);
# offline, each is served by the Debian package of that module. Online users can delete vendor/
# (it is git-ignored) and run `go mod tidy`. Idempotent: the vendor dir is rebuilt every run.
set -eu
cd "$(dirname "$0")"
GOCODE=${GOCODE:-/usr/share/gocode/src}
tmp=vendor.tmp.$$
rm -rf "$tmp"
mkdir "$tmp"
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/modules.txt"
# every `module version` pair in go.mod's require blocks / lines
awk '
  $1 == "require" && $2 == "(" { inblock = 1; next }
  inblock && $1 == ")" { inblock = 0; next }
  inblock && NF >= 2 { print $1, $2; next }
  $1 == "require" && NF >= 3 { print $2, $3 }
' go.mod | while read -r mod ver; do
  src="$GOCODE/$mod"
  if [ ! -f "$src/go.mod" ]; then
    echo "debian-vendor.sh: $src/go.mod missing: install the Debian package of $mod (see .ci/install-clients.sh)" >&2
    exit 1
  fi
  mkdir -p "$tmp/$(dirname "$mod")"
  ln -s "$src" "$tmp/$mod"
  gover=$(awk '$1 == "go" { print $2; exit }' "$src/go.mod")
  printf '# %s %s\n## explicit%s\n' "$mod" "$ver" "${gover:+; go $gover}" >>"$tmp/modules.txt"
  # every non-test package directory of the module
  (cd "$src" && find . -name '*.go' ! -name '*_test.go' ! -path '*/testdata/*' -printf '%h\n' |
    sort -u | sed "s#^\.#$mod#") >>"$tmp/modules.txt"
done
rm -rf vendor
mv "$tmp" vendor
trap - EXIT
echo "client/go/vendor -> $GOCODE ($(grep -c '^# ' vendor/modules.txt) modules)"
