#!/usr/bin/env bash
# Runs the Traefik plugin in a real Traefik v3.7.13, not the harness's
# reproduction of its loader: builds Traefik once into a cache directory
# (about 7 minutes on 2 cores, 240 MB), writes the plugin's release tree
# (traefik/harness/cmd/release) into a plugins-local layout, and starts
# Traefik on loopback with a file provider, a backend on 127.0.0.1:9000
# (the docs' examples' address) and the log at DEBUG.
#
#   tools/real-traefik.sh                      # the check: docs/traefik.md's first example, and a misspelled option
#   tools/real-traefik.sh dynamic.yml          # your configuration, for EDGELIMIT_TRAEFIK_SECONDS (600)
#   tools/real-traefik.sh dynamic.yml -- cmd   # runs cmd against it (600 s at most), then stops
#   tools/real-traefik.sh cost [flags]         # what a request costs: tools/traefikcost (about 15 minutes)
#
# cmd gets TRAEFIK_URL (the entry point), TRAEFIK_API (the API, to read a
# middleware's status and error: $TRAEFIK_API/api/http/middlewares) and
# TRAEFIK_LOG (Traefik's log: what the plugin prints is there, fmt at DBG
# and log at ERR). The backend answers "ok"; ?status=N answers N, ?cost=N
# sets X-Usage-Tokens: N. Ports: EDGELIMIT_TRAEFIK_PORT (18080, the API on
# the next one), EDGELIMIT_BACKEND_PORT (9000). Cache:
# EDGELIMIT_TRAEFIK_CACHE (~/.cache/edgelimit/traefik-v3.7.13).
#
# Not in CI (the build is too slow). The build differs from the release in
# what the module proxy here cannot give, none of it on a plugin's path:
# pkg/config/dynamic/ext, a nested module left out of the module's zip, is
# written as upstream has it (empty structs); lego's DNS providers whose
# SDKs the proxy refuses (edgedns, huaweicloud, oraclecloud, sakuracloud,
# ucloud, yandexcloud) are left out of its provider switch; Traefik's fork
# of go-http-auth, refused, is abbot/go-http-auth v0.4.0 with the fork's
# CheckSecret and RequireAuthStale added (basicAuth works; a stale digest
# answers as a failed one).
set -euo pipefail

VERSION=v3.7.13
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGELIMIT_TRAEFIK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgelimit/traefik-$VERSION}
PORT=${EDGELIMIT_TRAEFIK_PORT:-18080}
API_PORT=$((PORT + 1))
BACKEND_PORT=${EDGELIMIT_BACKEND_PORT:-9000}
SECONDS_MAX=${EDGELIMIT_TRAEFIK_SECONDS:-600}
MODULE=github.com/edgelimit/traefik-edgelimit

moddir() { go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'; }

build() {
	[ -x "$CACHE/traefik" ] && return
	mkdir -p "$CACHE"
	echo "building Traefik $VERSION into $CACHE (log: $CACHE/build.log)..." >&2
	local src lego goauth p
	src=$(moddir "github.com/traefik/traefik/v3@$VERSION")
	lego=$(moddir github.com/go-acme/lego/v5@v5.4.1)
	goauth=$(moddir github.com/abbot/go-http-auth@v0.4.0)
	rm -rf "$CACHE/src" "$CACHE/lego" "$CACHE/goauth"
	cp -r "$src" "$CACHE/src" && cp -r "$lego" "$CACHE/lego" && cp -r "$goauth" "$CACHE/goauth"
	chmod -R u+w "$CACHE/src" "$CACHE/lego" "$CACHE/goauth"

	mkdir -p "$CACHE/src/pkg/config/dynamic/ext"
	printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24.0\n' >"$CACHE/src/pkg/config/dynamic/ext/go.mod"
	printf '%s\n' 'package ext' '' 'type HTTP struct{}' '' 'type Router struct{}' '' 'type RouterIng struct{}' '' \
		'func (r RouterIng) ToRouter() Router { return Router{} }' >"$CACHE/src/pkg/config/dynamic/ext/ext.go"

	p='edgedns\|huaweicloud\|oraclecloud\|sakuracloud\|ucloud\|yandexcloud'
	sed -i -e "\#\"github.com/go-acme/lego/v5/providers/dns/\($p\)\"#d" \
		-e "/^\tcase \"\($p\)\"\(, \"fastdns\"\)\?:\$/,+1d" "$CACHE/lego/providers/dns/zz_gen_dns_providers.go"

	printf 'module github.com/abbot/go-http-auth\n\ngo 1.12\n\nrequire (\n\tgolang.org/x/crypto v0.56.0\n\tgolang.org/x/net v0.58.0\n)\n' >"$CACHE/goauth/go.mod"
	printf '%s\n' 'package auth' '' 'import (' '	"net/http"' '	"strings"' ')' '' \
		'// CheckSecret is the fork'"'"'s: whether password matches an htpasswd secret.' \
		'func CheckSecret(password, secret string) bool {' \
		'	compare := compareFuncs[0].compare' \
		'	for _, cmp := range compareFuncs[1:] {' \
		'		if strings.HasPrefix(secret, cmp.prefix) {' \
		'			compare = cmp.compare' \
		'			break' \
		'		}' \
		'	}' \
		'	return compare([]byte(secret), []byte(password)) == nil' \
		'}' '' \
		'// RequireAuthStale answers a stale digest as a failed one.' \
		'func (da *DigestAuth) RequireAuthStale(w http.ResponseWriter, r *http.Request) { da.RequireAuth(w, r) }' \
		>"$CACHE/goauth/zz_fork.go"
	(
		cd "$CACHE/src"
		sed -i 's#github.com/abbot/go-http-auth => .*#github.com/abbot/go-http-auth => ../goauth#' go.mod
		echo 'replace github.com/go-acme/lego/v5 => ../lego' >>go.mod
		GOFLAGS=-mod=mod go build -trimpath -ldflags "-X github.com/traefik/traefik/v3/pkg/version.Version=$VERSION" \
			-o "$CACHE/traefik.tmp" ./cmd/traefik
	) >"$CACHE/build.log" 2>&1 || {
		tail -20 "$CACHE/build.log" >&2
		exit 1
	}
	mv "$CACHE/traefik.tmp" "$CACHE/traefik"
}

build
WORK=$(mktemp -d /tmp/edgelimit-real-traefik.XXXXXX)
(cd "$ROOT/traefik/harness" && go run ./cmd/release -out "$WORK/plugins-local/src/$MODULE" -module "$MODULE" >/dev/null)
if [ "${1:-}" = cost ]; then
	shift
	cd "$ROOT/tools" && go build -o "$WORK/traefikcost" ./traefikcost
	exec timeout 3600 "$WORK/traefikcost" -traefik "$CACHE/traefik" -work "$WORK" "$@"
fi

CHECK=""
if [ $# -eq 0 ]; then
	# docs/traefik.md's first dynamic configuration, and a middleware with a
	# misspelled option on a router of its own.
	CHECK=1
	mkdir "$WORK/dynamic"
	awk '/^# dynamic.yml$/{on=1; next} on && /^```/{exit} on' "$ROOT/docs/traefik.md" >"$WORK/dynamic/docs.yml"
	printf '%s\n' 'http:' '  routers:' '    typo: {rule: PathPrefix(`/typo`), service: api, middlewares: [typo]}' \
		'  middlewares:' '    typo:' '      plugin:' '        edgelimit:' '          limits:' \
		'            l: {limit: 5, windwo: 1m}' >"$WORK/dynamic/typo.yml"
	PROVIDER=--providers.file.directory=$WORK/dynamic
else
	PROVIDER=--providers.file.filename=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
	shift
	[ "${1:-}" = "--" ] && shift
fi

printf '%s\n' 'import http.server, sys, urllib.parse' \
	'class H(http.server.BaseHTTPRequestHandler):' \
	'    def do_GET(self):' \
	'        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)' \
	'        self.send_response(int(q.get("status", ["200"])[0]))' \
	'        if "cost" in q:' \
	'            self.send_header("X-Usage-Tokens", q["cost"][0])' \
	'        self.send_header("Content-Length", "3")' \
	'        self.end_headers()' \
	'        self.wfile.write(b"ok\n")' \
	'    do_POST = do_GET' \
	'    def log_message(self, *a): pass' \
	'http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' >"$WORK/backend.py"

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	echo "Traefik's log: $WORK/traefik.log" >&2
}
trap cleanup EXIT
timeout $((SECONDS_MAX + 120)) python3 "$WORK/backend.py" "$BACKEND_PORT" &
pids+=($!)
cd "$WORK"
timeout $((SECONDS_MAX + 120)) "$CACHE/traefik" \
	--entrypoints.web.address="127.0.0.1:$PORT" --entrypoints.traefik.address="127.0.0.1:$API_PORT" \
	--api.insecure=true --api.dashboard=false --ping=true "$PROVIDER" \
	--experimental.localPlugins.edgelimit.moduleName="$MODULE" \
	--log.level=DEBUG --log.noColor=true >"$WORK/traefik.log" 2>&1 &
pids+=($!)

export TRAEFIK_URL=http://127.0.0.1:$PORT TRAEFIK_API=http://127.0.0.1:$API_PORT TRAEFIK_LOG=$WORK/traefik.log
for i in $(seq 1 120); do
	curl -s -m 2 -o /dev/null "$TRAEFIK_API/ping" && break
	if [ "$i" = 120 ] || ! kill -0 "${pids[1]}" 2>/dev/null; then
		echo "Traefik did not answer within 60s" >&2
		tail -20 "$TRAEFIK_LOG" >&2
		exit 1
	fi
	sleep 0.5
done
sleep 1 # the file provider's configuration comes after the entry points
curl -s -m 5 "$TRAEFIK_API/api/http/middlewares" | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    if m.get("provider") == "file":
        print("middleware", m["name"], m.get("status"), "; ".join(m.get("error", [])))' >&2

if [ -n "$CHECK" ]; then
	# 5 requests of one client: the bucket of 3 lets 3 through.
	got=""
	for i in 1 2 3 4 5; do
		got="$got $(curl -s -m 10 -o /dev/null -w '%{http_code}' "$TRAEFIK_URL/")"
	done
	limit=$(curl -s -m 10 -D - -o /dev/null "$TRAEFIK_URL/" | tr -d '\r' | sed -n 's/^X-Ratelimit-Limit: //Ip')
	typo=$(curl -s -m 10 "$TRAEFIK_API/api/http/routers/typo@file" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("status"))')
	echo "statuses:$got; X-RateLimit-Limit: $limit; the misspelled middleware's router: $typo" >&2
	fail=""
	[ "$got" = " 200 200 200 429 429" ] && [ "$limit" = 3 ] || fail="want 200 200 200 429 429 and a limit of 3"
	grep -q 'unknown option limits.l.windwo (did you mean window?)' "$TRAEFIK_LOG" && [ "$typo" = disabled ] ||
		fail="$fail; want the misspelled option refused in the log, its router disabled"
	[ -z "$fail" ] || {
		echo "FAIL: $fail" >&2
		exit 1
	}
	echo "ok: the plugin runs in Traefik $VERSION as docs/traefik.md says" >&2
elif [ $# -gt 0 ]; then
	timeout "$SECONDS_MAX" "$@"
else
	echo "Traefik on $TRAEFIK_URL (API $TRAEFIK_API) for ${SECONDS_MAX}s; Ctrl-C stops it" >&2
	sleep "$SECONDS_MAX"
fi
