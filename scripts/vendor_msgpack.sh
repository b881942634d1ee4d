#!/usr/bin/env bash
# Refresh the vendored MessagePack codec of the browser viewer:
#   client_demo/viewer/vendor/msgpack.js   one ES module (import { encode, decode } from "./vendor/msgpack.js")
#   client_demo/viewer/vendor/LICENSE      the package's licence (ISC)
#   client_demo/viewer/vendor/VERSION      package, version, sha256, where it came from
#
# Usage: scripts/vendor_msgpack.sh [VERSION]      (default: the pinned version below)
#
# @msgpack/msgpack ships its ESM build as ~15 files (dist.esm/*.mjs, utils/*.mjs) and a
# UMD build that cannot be `import`ed (it assigns to `this`, which is undefined in a
# module). So the ESM build is joined into a single ES module with esbuild (--bundle
# --format=esm: scope hoisting only, no minification, no transpiling); the code is the
# package's own. Needs node + npm with registry access; installs nothing outside a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

MSGPACK_VERSION="${1:-3.1.3}"
ESBUILD_VERSION="0.28.2"
DEST="client_demo/viewer/vendor"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

npm pack --silent --json --pack-destination "$tmp" "@msgpack/msgpack@${MSGPACK_VERSION}" >"$tmp/pack.json"
tarball="$tmp/msgpack-msgpack-${MSGPACK_VERSION}.tgz"
integrity="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1]))[0].integrity)' "$tmp/pack.json")"
tar -xzf "$tarball" -C "$tmp"
pkg="$tmp/package"
got="$(node -p 'require(process.argv[1]).version' "$pkg/package.json")"
[ "$got" = "$MSGPACK_VERSION" ] || { echo "expected @msgpack/msgpack $MSGPACK_VERSION, got $got" >&2; exit 1; }

npm install --silent --no-save --no-audit --no-fund --prefix "$tmp/tools" "esbuild@${ESBUILD_VERSION}" >/dev/null
# run inside the package so the "// dist.esm/..." path comments (and the sha256) are reproducible
(cd "$pkg" && "$tmp/tools/node_modules/.bin/esbuild" dist.esm/index.mjs \
    --bundle --format=esm --platform=browser --legal-comments=inline --log-level=warning \
    --banner:js="/* @msgpack/msgpack ${MSGPACK_VERSION} (ISC licence, see LICENSE), its dist.esm bundled into one ES module by scripts/vendor_msgpack.sh. Do not edit. */" \
    --outfile="$tmp/msgpack.js")

# smoke test: the bundle round-trips a state-like map in node
node --input-type=module -e "
import { encode, decode } from '$tmp/msgpack.js';
const m = decode(encode({ type: 'state', n: 1, rec: new Uint8Array([1, 2, 3]), server_time: 1.5 }));
if (m.type !== 'state' || m.rec.length !== 3 || m.server_time !== 1.5) throw new Error('round trip failed');
"

mkdir -p "$DEST"
cp "$tmp/msgpack.js" "$DEST/msgpack.js"
cp "$pkg/LICENSE" "$DEST/LICENSE"
cat >"$DEST/VERSION" <<EOF
package: @msgpack/msgpack
version: ${MSGPACK_VERSION}
file: msgpack.js
sha256: $(sha256sum "$DEST/msgpack.js" | cut -d' ' -f1)
source: npm pack @msgpack/msgpack@${MSGPACK_VERSION} (https://registry.npmjs.org/@msgpack/msgpack/-/msgpack-${MSGPACK_VERSION}.tgz)
tarball integrity: ${integrity}
tarball sha256: $(sha256sum "$tarball" | cut -d' ' -f1)
built from: package/dist.esm/index.mjs, bundled with esbuild ${ESBUILD_VERSION} (--bundle --format=esm --platform=browser, not minified)
licence: ISC (LICENSE, copied from package/LICENSE)
refresh: scripts/vendor_msgpack.sh [version]
EOF
echo "vendored @msgpack/msgpack ${MSGPACK_VERSION} into ${DEST}"
