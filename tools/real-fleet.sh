#!/usr/bin/env bash
# The mixed fleet in a real Traefik: a Caddy with the edge_limit module and
# the Traefik plugin in Traefik v3.7.13 (tools/real-traefik.sh, built once
# into its cache) on one private redis-server, with the same global limits
# (per_client: key X-Api-Key then the IP, 50 per fixed minute; tb, gc, sw:
# a token bucket, GCRA and a sliding window of 20 per hour). Then
# tools/real-fleet.py checks that together they admit exactly the limit,
# sequential and concurrent (EDGELIMIT_FLEET_WORKERS, 8), on one Redis hash
# per client and the same field (also for a client without X-Api-Key, by
# its IP); that a reset and a credit through Caddy's admin API end Traefik's
# local denial of the client at once; and that both edges send the same
# X-RateLimit-* and Retry-After for the same state.
#
#   tools/real-fleet.sh     # 10 s to 1 min (a phase waits for room in a minute of Redis's clock)
#
# Loopback only. Ports: EDGELIMIT_REDIS_PORT (26399), EDGELIMIT_CADDY_PORT
# (28090, its admin API on the next one), EDGELIMIT_TRAEFIK_PORT (28080, its
# API on the next one), EDGELIMIT_BACKEND_PORT (29000). Not in CI. Redis is
# stopped with Traefik, whose log may then end on a lost subscription.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RPORT=${EDGELIMIT_REDIS_PORT:-26399}
CPORT=${EDGELIMIT_CADDY_PORT:-28090}
export EDGELIMIT_TRAEFIK_PORT=${EDGELIMIT_TRAEFIK_PORT:-28080}
export EDGELIMIT_BACKEND_PORT=${EDGELIMIT_BACKEND_PORT:-29000}
export EDGELIMIT_TRAEFIK_SECONDS=${EDGELIMIT_TRAEFIK_SECONDS:-400}
WORK=$(mktemp -d /tmp/edgelimit-real-fleet.XXXXXX)

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	echo "logs: $WORK" >&2
}
trap cleanup EXIT

timeout 900 redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no \
	--dir "$WORK" --logfile "$WORK/redis.log" &
pids+=($!)

(cd "$ROOT" && go build -o "$WORK/caddy-edgelimit" ./cmd/caddy)
# The limits, alike in both (global scope: the same Redis fields): the Caddy
# rule, then the plugin's options. per_client is on /, the others on /<name>.
limits=(
	'per_client|rate 50/1m|limit: 50, window: 1m'
	'tb|token_bucket 20 1/1h|algorithm: token_bucket, limit: 20, refill: 1, window: 1h'
	'gc|gcra 20/1h|algorithm: gcra, limit: 20, window: 1h'
	'sw|rate 20/1h\n\t\t\twindow sliding|algorithm: sliding_window, limit: 20, window: 1h'
)
{
	printf '{\n\tadmin 127.0.0.1:%s\n\tedge_limit {\n\t\tstorage redis {\n\t\t\turl redis://127.0.0.1:%s/0\n\t\t\ttimeout 2s\n\t\t}\n' $((CPORT + 1)) "$RPORT"
	for l in "${limits[@]}"; do
		IFS='|' read -r name caddy _ <<<"$l"
		printf "\t\tlimit $name {\n\t\t\tkey {header.X-Api-Key} {client_ip}\n\t\t\t$caddy\n\t\t}\n"
	done
	printf '\t}\n}\n\nhttp://127.0.0.1:%s {\n\tbind 127.0.0.1\n\thandle /health {\n\t\trespond "ok"\n\t}\n' "$CPORT"
	for l in "${limits[@]}"; do
		IFS='|' read -r name _ _ <<<"$l"
		path=/$name
		[ "$name" = per_client ] && path=""
		printf '\thandle %s {\n\t\tedge_limit {\n\t\t\tuse %s\n\t\t}\n\t\trespond "ok"\n\t}\n' "$path" "$name"
	done
	printf '}\n'
} >"$WORK/Caddyfile"
HOME=$WORK/home XDG_DATA_HOME=$WORK/home XDG_CONFIG_HOME=$WORK/home timeout 900 "$WORK/caddy-edgelimit" run \
	--config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
pids+=($!)

{
	printf 'http:\n  services:\n    api:\n      loadBalancer:\n        servers:\n          - url: http://127.0.0.1:%s\n  routers:\n' "$EDGELIMIT_BACKEND_PORT"
	for l in "${limits[@]}"; do
		IFS='|' read -r name _ _ <<<"$l"
		path=/$name
		[ "$name" = per_client ] && path=/
		printf '    %s: {rule: "PathPrefix(`%s`)", service: api, middlewares: [%s]}\n' "$name" "$path" "$name"
	done
	printf '  middlewares:\n'
	for l in "${limits[@]}"; do
		IFS='|' read -r name _ traefik <<<"$l"
		printf '    %s:\n      plugin:\n        edgelimit:\n          storage: {redis: {address: "127.0.0.1:%s", timeout: 2s}}\n' "$name" "$RPORT"
		printf '          limits:\n            %s: {key: [header:X-Api-Key, ip], %s}\n' "$name" "$traefik"
	done
} >"$WORK/dynamic.yml"

for i in $(seq 1 60); do
	curl -s -m 2 -o /dev/null "http://127.0.0.1:$CPORT/health" && break
	[ "$i" = 60 ] && { echo "Caddy did not answer within 30s" >&2; tail -20 "$WORK/caddy.log" >&2; exit 1; }
	sleep 0.5
done

export CADDY_URL=http://127.0.0.1:$CPORT CADDY_ADMIN=http://127.0.0.1:$((CPORT + 1)) REDIS_PORT=$RPORT
"$ROOT/tools/real-traefik.sh" "$WORK/dynamic.yml" -- python3 "$ROOT/tools/real-fleet.py"
