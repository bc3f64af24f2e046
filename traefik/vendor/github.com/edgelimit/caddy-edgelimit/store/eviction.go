package store

import (
	"strconv"
	"strings"
)

// EvictionAdvice is the warning for a Redis whose memory policy can forget
// the counts of clients that used up their limits, or "" when it cannot:
// maxmemory is Redis's maxmemory (0: no bound) and policy its
// maxmemory-policy. With a bound and any policy but noeviction, a flood of
// made-up client keys fills Redis, which then evicts other keys to make
// room, exhausted clients' counters among them: those clients get their
// limits whole again. With noeviction Redis refuses the writes instead,
// and the stores still deny, from what Redis holds, the clients it holds
// as denied (Remote: a read-only decision).
func EvictionAdvice(maxmemory int64, policy string) string {
	if maxmemory <= 0 || policy == "" || policy == "noeviction" {
		return ""
	}
	return "Redis evicts keys when full (maxmemory " + strconv.FormatInt(maxmemory, 10) + ", maxmemory-policy " + policy +
		"): a flood of made-up client keys can evict the counters of clients that used up their limits, which then get them whole again; " +
		"set maxmemory-policy noeviction on a Redis that counts limits (when it is full, the clients it holds as denied are still denied)"
}

// InfoField is the value of field in the text of Redis's INFO reply
// ("field:value" lines), or "": for an edge whose client does not read
// INFO (the Traefik plugin's).
func InfoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSuffix(line, "\r"), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// IsOOM tells whether err is Redis refusing a write at its maxmemory
// ("OOM command not allowed when used memory > 'maxmemory'", raised by the
// script's first write: the script wrote nothing).
func IsOOM(err error) bool {
	return err != nil && strings.Contains(err.Error(), "OOM command not allowed")
}
