"""The checks of tools/real-fleet.sh (run by it): a Caddy and the plugin in a
real Traefik on one Redis, one global limit per_client of 50 per fixed
minute, keyed by X-Api-Key. Exits 1 on a discrepancy."""
import concurrent.futures, hashlib, json, os, secrets, subprocess, sys, time, urllib.error, urllib.request

T, C = os.environ["TRAEFIK_URL"], os.environ["CADDY_URL"]
ADMIN, RPORT = os.environ["CADDY_ADMIN"], os.environ["REDIS_PORT"]
LIMIT, FIELD = 50, "g/per_client/fixed_window#0"
EDGES = {T: "traefik", C: "caddy"}
failures = []


def redis(*args):
    return subprocess.run(["redis-cli", "-p", RPORT, "--raw", *args], check=True, timeout=10,
                          capture_output=True, text=True, errors="backslashreplace").stdout.split("\n")[:-1]


def now():
    return int(redis("TIME")[0])


def get(base, key, path="/"):
    req = urllib.request.Request(base + path, headers={"X-Api-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def check(ok, what):
    print(("ok:   " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures.append(what)


def admin(route, body):
    req = urllib.request.Request(f"{ADMIN}/edge_limit/{route}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def fresh_minute():
    """Waits (60 s at most) until a phase of under 35 s fits in the current
    minute of Redis's clock, and returns that minute."""
    s = now() % 60
    if s > 25:
        time.sleep(61 - s)
    return now() // 60


def hash_of(key):
    return "edgelimit:{" + hashlib.sha256(key.encode()).hexdigest()[:32] + "}"


def run(name, requests, workers):
    """Sends (edge, key) requests, workers at a time, and checks that each
    client got exactly LIMIT admissions within one minute of Redis's clock."""
    minute = fresh_minute()
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        results = list(ex.map(lambda r: (r, get(*r)[0]), requests))
    took = time.time() - start
    if now() // 60 != minute:
        check(False, f"{name}: crossed a minute of Redis's clock ({took:.1f}s): inconclusive")
        return
    keys = sorted({k for _, k in requests})
    for k in keys:
        got = {(e, s): 0 for e in (T, C) for s in (200, 429)}
        for (e, kk), s in results:
            if kk == k:
                got[(e, s)] = got.get((e, s), 0) + 1
        allowed = got[(T, 200)] + got[(C, 200)]
        other = len([1 for (e, kk), s in results if kk == k and s not in (200, 429)])
        check(allowed == LIMIT and other == 0,
              f"{name} {k}: admitted {allowed} of {len(requests) // len(keys)} (traefik {got[(T, 200)]}, "
              f"caddy {got[(C, 200)]}), other statuses {other}; want {LIMIT} ({took:.1f}s)")
        fields = sorted(redis("HKEYS", hash_of(k)))
        check(fields == sorted([FIELD, "~"]), f"{name} {k}: {hash_of(k)} fields {fields}")


def headers_and_reset():
    key = "hdr-" + secrets.token_hex(4)
    minute = fresh_minute()
    resets = set()
    for i in range(LIMIT):
        edge = (T, C)[i % 2]
        s, h = get(edge, key)
        want = (200, str(LIMIT), str(LIMIT - 1 - i))
        got = (s, h.get("x-ratelimit-limit"), h.get("x-ratelimit-remaining"))
        if got != want:
            check(False, f"headers: request {i + 1} to {EDGES[edge]}: status, limit, remaining {got}, want {want}")
        resets.add((EDGES[edge], h.get("x-ratelimit-reset")))
    check(len({r for _, r in resets}) == 1, f"headers: X-RateLimit-Reset of the 50 admitted, per edge: {sorted(resets)}")
    denials = []
    for edge in (T, C, T, C, T):  # Traefik's first denial asks Redis, the next ones are local
        s, h = get(edge, key)
        denials.append((EDGES[edge], s, h.get("x-ratelimit-limit"), h.get("x-ratelimit-remaining"),
                        h.get("x-ratelimit-reset"), h.get("retry-after")))
    reset_at = (now() // 60 + 1) * 60
    ok = all(d[1:5] == (429, str(LIMIT), "0", str(reset_at)) for d in denials)
    check(ok and len({d[5] for d in denials}) <= 2,
          f"headers: denials (edge, status, limit, remaining, reset, retry-after): {denials}; reset wanted {reset_at}")
    if now() // 60 != minute:
        check(False, "headers: crossed a minute of Redis's clock: inconclusive")
        return

    # Traefik now denies the client locally: more denials cost no script.
    stats = lambda: sum(int(l.split("calls=")[1].split(",")[0]) for l in redis("INFO", "commandstats")
                        if l.startswith(("cmdstat_evalsha:", "cmdstat_eval:")))
    before = stats()
    local = [get(T, key)[0] for _ in range(10)]
    check(local == [429] * 10 and stats() - before == 0,
          f"reset: 10 more Traefik requests {set(local)}, scripts run on Redis {stats() - before} (local denials: want 0)")
    subs = redis("PUBSUB", "NUMSUB", "edgelimit:invalidate")
    check(subs[1:] == ["2"], f"reset: subscribers of edgelimit:invalidate {subs[1:]} (Caddy and Traefik: want 2)")

    start = time.time()
    answer = json.dumps(admin("reset", {"limit": "per_client", "key": key}), separators=(",", ":"))
    tries = []
    while time.time() - start < 3 and (not tries or tries[-1][0] != 200):
        tries.append(get(T, key))
        if tries[-1][0] != 200:
            time.sleep(0.02)
    s, h = tries[-1]
    check(s == 200 and h.get("x-ratelimit-remaining") == str(LIMIT - 1),
          f"reset: Caddy's admin answered {answer[:160]}; Traefik admitted the client after "
          f"{time.time() - start:.3f}s and {len(tries)} request(s) (status {s}, remaining {h.get('x-ratelimit-remaining')}); "
          f"Redis's window ends in {reset_at - now()}s")
    s, h = get(C, key)
    check(s == 200 and h.get("x-ratelimit-remaining") == str(LIMIT - 2),
          f"reset: then Caddy: status {s}, remaining {h.get('x-ratelimit-remaining')} (want {LIMIT - 2})")

    # A credit through Caddy's admin API ends Traefik's local denial too.
    statuses = [get((T, C)[i % 2], key)[0] for i in range(LIMIT)]
    before = stats()
    local = [get(T, key)[0] for _ in range(5)]
    check(statuses.count(200) == LIMIT - 2 and local == [429] * 5 and stats() == before,
          f"credit: admitted {statuses.count(200)} more (want {LIMIT - 2}), then Traefik {local} on {stats() - before} scripts")
    credit = admin("credit", {"limit": "per_client", "key": key, "part": 0, "units": 3})
    part = credit["parts"][0] if "parts" in credit else credit
    after = [get(T, key) for _ in range(4)]
    check([x[0] for x in after] == [200, 200, 200, 429] and
          [x[1].get("x-ratelimit-remaining") for x in after] == ["2", "1", "0", "0"] and
          {x[1].get("x-ratelimit-reset") for x in after} == {str(reset_at)},
          f"credit: Caddy gave {part.get('given')} (remaining {part.get('remaining')}, reset {part.get('reset_unix')}); "
          f"then Traefik: {[(x[0], x[1].get('x-ratelimit-remaining'), x[1].get('x-ratelimit-reset')) for x in after]}")
    if now() // 60 != minute:
        check(False, "reset and credit: crossed a minute of Redis's clock: inconclusive")


def paired(path, limit):
    """Two new clients, A asking Traefik then Caddy in turn and B Caddy then
    Traefik, one request each in turn: the i-th answers of A and B meet the
    same state on different edges and must carry the same headers (the
    times within a second)."""
    a, b = "pa-" + secrets.token_hex(4), "pb-" + secrets.token_hex(4)
    bad, admitted = [], [0, 0]
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after")
    for i in range(limit + 4):
        ea, eb = (T, C) if i % 2 == 0 else (C, T)
        (sa, ha), (sb, hb) = get(ea, a, path), get(eb, b, path)
        admitted[0] += sa == 200
        admitted[1] += sb == 200
        va, vb = [ha.get(n) for n in names], [hb.get(n) for n in names]
        same = sa == sb and va[:2] == vb[:2] and all(
            (x is None) == (y is None) and (x is None or abs(int(x) - int(y)) <= 1) for x, y in zip(va[2:], vb[2:]))
        if not same:
            bad.append((i + 1, EDGES[ea], sa, va, EDGES[eb], sb, vb))
    check(not bad and admitted == [limit, limit],
          f"headers {path}: admitted {admitted} of {limit + 4} each, want {limit}; differing answers "
          f"(request, edge, status, limit/remaining/reset/retry-after): {bad[:4]}; last: {EDGES[ea]} {sa} {va}")


def main():
    tag = secrets.token_hex(3)
    seq = [f"seq{i}-{tag}" for i in range(4)]
    run("sequential", [((T, C)[(i + c) % 2], k) for i in range(300) for c, k in enumerate(seq)], 1)
    conc = [f"conc{i}-{tag}" for i in range(4)]
    run("concurrent", [((T, C)[(i + c) % 2], k) for i in range(300) for c, k in enumerate(conc)],
        int(os.environ.get("EDGELIMIT_FLEET_WORKERS", "8")))
    keys = [k for k in redis("--scan", "--pattern", "edgelimit:*")]
    want = sorted(hash_of(k) for k in seq + conc)
    extra = [(k, redis("TYPE", k)[0], redis("TTL", k)[0]) for k in sorted(set(keys) - set(want))]
    check(set(want) <= set(keys) and not extra,
          f"layout: {len(keys)} keys in Redis, want one hash per client ({len(want)}); others (key, type, ttl): {extra}")
    minute = fresh_minute()  # no X-Api-Key: the client is its IP, the key's second source
    got = [get((T, C)[i % 2], "")[0] for i in range(LIMIT + 10)]
    fields = sorted(redis("HKEYS", hash_of("127.0.0.1")))
    check(got.count(200) == LIMIT and fields == [FIELD[:-1] + "1", "~"] and now() // 60 == minute,
          f"by IP: admitted {got.count(200)} of {LIMIT + 10}; {hash_of('127.0.0.1')} fields {fields}")
    headers_and_reset()
    for path in ("/tb", "/gc", "/sw"):
        paired(path, 20)
    print(f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


main()
